"""Where records come from: the source catalog, native-file readers, adapters and (later) downloads."""
