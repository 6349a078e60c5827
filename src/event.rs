//! The envelope: request bodies parsed into events, normalised, keyed.
