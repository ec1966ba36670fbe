"""The GPU worker: takes analytics jobs, runs them on the dataset version, returns signed results.

`services.worker.analytics` is the pure compute library the worker calls; it knows nothing of Kafka.
"""
