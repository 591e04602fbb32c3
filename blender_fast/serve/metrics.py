"""The server's Prometheus series (GET /metrics): requests by route and status, latency, the engine's
queue and batches, and /v1/fuse's generate batches."""
from __future__ import annotations


class Metrics:
    """The Prometheus series of one app, in its own registry (several apps may share a process)."""

    def __init__(self, engine):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("blender_fast_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("blender_fast_request_seconds", "Request latency by route", ["route"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        q_pairs = Gauge("blender_fast_queue_pairs", "Model rows admitted and not yet run", registry=r)
        q_pairs.set_function(lambda: engine.queued_pairs)
        q_tokens = Gauge("blender_fast_queue_tokens", "Tokens held by requests in flight", registry=r)
        q_tokens.set_function(lambda: engine.queued_tokens)
        in_flight = Gauge("blender_fast_requests_in_flight", "Engine requests admitted and not yet answered",
                          registry=r)
        in_flight.set_function(lambda: engine.in_flight)
        self.batch_rows = Histogram("blender_fast_batch_rows", "Rows per model call", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_tokens = Histogram("blender_fast_batch_tokens", "Padded tokens per model call", registry=r,
                                      buckets=(256, 512, 1024, 2048, 4096, 8192, 16384, 32768))
        self.batch_pad = Histogram("blender_fast_batch_pad_fraction", "Pad tokens / padded tokens per model call",
                                   registry=r, buckets=(0, .05, .1, .2, .3, .4, .5, .75, 1))
        self.model_seconds = Counter("blender_fast_model_seconds", "Seconds spent in the model", registry=r)
        self.forward_passes = Counter("blender_fast_forward_passes", "Model rows run (one per ordered pair)",
                                      registry=r)
        self.batches = Counter("blender_fast_batches", "Model calls", registry=r)
        self.tokens = Counter("blender_fast_tokens", "Real tokens run through the model", registry=r)
        self.pad_tokens = Counter("blender_fast_pad_tokens", "Pad tokens run through the model", registry=r)
        self.fuse_batch_prompts = Histogram("blender_fast_fuse_batch_prompts", "Prompts per fusion generate batch",
                                            registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.fuse_batch_requests = Histogram("blender_fast_fuse_batch_requests",
                                             "Requests sharing one fusion generate batch", registry=r,
                                             buckets=(1, 2, 4, 8, 16, 32, 64))
        self.fuse_seconds = Counter("blender_fast_fuse_seconds", "Seconds spent in fusion generate", registry=r)

    def observe_fuse_batch(self, prompts: int, requests: int, seconds: float) -> None:
        self.fuse_batch_prompts.observe(prompts)
        self.fuse_batch_requests.observe(requests)
        self.fuse_seconds.inc(seconds)

    def observe_batch(self, rows: int, tokens: int, pad: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(tokens + pad)
        self.batch_pad.observe(pad / (tokens + pad) if tokens + pad else 0.0)
        self.model_seconds.inc(seconds)
        self.forward_passes.inc(rows)
        self.batches.inc()
        self.tokens.inc(tokens)
        self.pad_tokens.inc(pad)
