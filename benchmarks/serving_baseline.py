"""The baseline benchmarks/serving.py measures the agent against: FastAPI + uvicorn (uvloop, httptools) +
orjson around one onnxruntime session, as one would write it by hand.

    EDGEKIT_BASELINE_MODEL=model.ort EDGEKIT_BASELINE_THREADS=2 uvicorn serving_baseline:app --loop uvloop --http httptools

``POST /v1/predict`` takes the agent's JSON body ({"inputs": {name: nested lists}}) or a raw .npy body,
and answers {"outputs": {name: nested lists}} with orjson. Two ways to write the endpoint, both served
(the benchmark takes the faster of the two in every cell):

- ``/v1/predict``: ``async def`` that runs the session inline on the event loop (no thread hop);
- ``/threaded/v1/predict``: the work on FastAPI's thread pool, as it runs a plain ``def`` endpoint (its advice
  for blocking code).

Neither validates beyond what numpy and onnxruntime do, keeps telemetry, or bounds anything.
"""

from __future__ import annotations

import io
import os

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse, Response
from starlette.concurrency import run_in_threadpool

_opts = ort.SessionOptions()
_opts.intra_op_num_threads = int(os.environ.get("EDGEKIT_BASELINE_THREADS", "0"))
_sess = ort.InferenceSession(os.environ["EDGEKIT_BASELINE_MODEL"], _opts, providers=["CPUExecutionProvider"])
_input = _sess.get_inputs()[0]
_dtype = np.float32 if _input.type == "tensor(float)" else np.int64
_names = [o.name for o in _sess.get_outputs()]

app = FastAPI(default_response_class=ORJSONResponse)


def _infer(body: bytes, ctype: str) -> Response:
    if ctype.startswith("application/x-npy"):
        x = np.load(io.BytesIO(body), allow_pickle=False)
    else:
        x = np.asarray(orjson.loads(body)["inputs"][_input.name], dtype=_dtype)
    outputs = _sess.run(None, {_input.name: x})
    return Response(orjson.dumps({"outputs": dict(zip(_names, outputs, strict=True))}, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")


@app.post("/v1/predict")
async def predict(request: Request) -> Response:
    return _infer(await request.body(), request.headers.get("content-type", "application/json"))


@app.post("/threaded/v1/predict")
async def predict_threaded(request: Request) -> Response:
    # what FastAPI does for a plain `def` endpoint (which could not read a raw body): the work on its thread pool
    return await run_in_threadpool(_infer, await request.body(), request.headers.get("content-type", "application/json"))
