"""The stages, one module each: plain functions over Arrow/Parquet, each exported as one `Stage` object. A stage
imports only the machinery (`flows.core`), sources and schemas, never another stage."""
