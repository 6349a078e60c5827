# benches/ingest_config.sh: sourced by benches/ingest.sh and benches/cpu_per_event.sh, so
# both measure the same weir.
# ingest_config FILE DATA_DIR FSYNC PIPELINE writes the config they run: topic
# `clickstream` (4 partitions as in config.example.toml, `key_field` the user) with the
# given fsync mode, listening on 127.0.0.1:8091, and with PIPELINE=1 the seed's
# `page_views` pipeline as config.example.toml defines it.
ingest_config() {
  cat > "$1" <<TOML
[server]
listen = "127.0.0.1:8091"
[storage]
data_dir = "$2"
[[topic]]
name = "clickstream"
partitions = 4
fsync = "$3"
key_field = "/payload/user_id"
TOML
  if [ "$4" = 1 ]; then cat >> "$1" <<'TOML'
[[pipeline]]
name = "page_views"
source = "clickstream"
filter = ["page.click"]
group_by = ["/payload/page_id"]
window = { kind = "tumbling", size = "1m" }
time = "event"
max_out_of_orderness = "5s"
allowed_lateness = "1m"
[[pipeline.aggregate]]
name = "count"
fn = "count"
TOML
  fi
}
