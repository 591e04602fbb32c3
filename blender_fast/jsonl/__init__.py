"""JSON Lines records, read and written by one set of rules for every front end (the CLI, the Ray job,
the benchmarks): prompts.py reads prompt records (file:line in every error; UTF-8 with or without a BOM;
a pipe, FIFO or '-' read as a stream), targets.py checks where an output may go before any work,
writers.py writes records (atomically, or streamed) and says what is on disk when a write fails."""
