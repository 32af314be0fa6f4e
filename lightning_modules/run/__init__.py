"""The run plumbing around a method: run directories, checkpoint callbacks and resume, preemption, loggers (and
evaluate.py's report as a W&B run), progress, the CPU cost notice, callbacks and the command line's errors. It builds
on ``checkpoints/`` (the files) and ``evaluation/`` (the in-training diagnostics, the report); neither imports it.
The methods do not depend on it (except for the logging-step rule, host_reads.logging_step)."""
