"""The runtime around the scheduler: worker processes, resource binding, IPC and the engine."""
