//! The weir command line. Thin: parse arguments, run, map the outcome to an exit code.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let _ = weir::log::topic_name::validate_topic_name("skeleton");
}
