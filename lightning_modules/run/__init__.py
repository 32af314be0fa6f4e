"""The run plumbing around a method: run directories, checkpoints and resume, preemption, loggers, progress, the CPU
cost notice, callbacks and the command line's errors. The methods do not depend on it (except for the logging-step
rule, host_reads.logging_step)."""
