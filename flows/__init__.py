"""What happens to records: each stage a plain function over Arrow/Parquet, and the Prefect flow around them."""
