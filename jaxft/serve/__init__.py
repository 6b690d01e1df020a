"""HTTP serving of exported models: `python -m jaxft.main serve --model DIR [--model DIR2 ...] --port 8080`.

app.py      the Starlette app and the command: jaxft's POST /predict {"texts"}, /redact, /health, /metrics;
            access control, TLS, the SIGTERM drain
hf.py       HF Inference Endpoints / text-embeddings-inference: POST /, POST /predict {"inputs"}, /tokenize, /info
v2.py       the Open Inference Protocol v2 (KServe, Triton): /v2, /v2/health/*, /v2/models/{name}[/ready|/infer]
batcher.py  dynamic batching: requests of every route that arrive within a few ms share one model call
inputs.py   request bodies -> validated items, or a RequestError with an HTTP status and a message
auth.py     API keys (`--api-keys FILE`), compared in constant time
redact.py   NER data masking (`--redact TYPES`)
metrics.py  /metrics with prometheus_client: process collectors, requests, latency, batches, compiles
"""
