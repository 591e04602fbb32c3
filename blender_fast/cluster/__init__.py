"""Jobs over many prompts: JSON Lines records, the shared result record, the Ray job."""
