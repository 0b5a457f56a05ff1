"""Event ingestion: from a queue message to saved rows or produced messages."""
