"""`POST /v1/medgemma/localize`: boxes around the named objects in one 2D image (`medgemma localize`); one model
call per object, all cancelled together when one fails or the client leaves."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ...localize.run import assemble
from ..jobs import ClientGone, collect
from ..localize import plan_localize
from ..schemas import LocalizeRequest
from ..sr import regions_part
from ..state import ServerState
from . import gated_post

log = logging.getLogger("medgemma_toolkit.serve")
router = APIRouter()


@gated_post(router, "/v1/medgemma/localize", LocalizeRequest)
async def localize(request: Request, body: LocalizeRequest, state: ServerState) -> Response:
    state.check_model(body.model)
    plan = await state.gate.decode(plan_localize, state.mg, body, state.config)
    timeout = state.config.request_timeout_s
    jobs = [state.batcher.submit(r, timeout, announced=False, stream=False) for r in plan.requests]
    try:
        done = [await collect(job, request, state) for job in jobs]
    except ClientGone:
        request.state.status_override = 499
        return Response(status_code=499)
    finally:
        for job in jobs:  # after a failure or a client gone, the other objects' work stops too
            job.cancel()
    result = assemble(plan.size, plan.objects, done, state.served)
    log.info(
        "request_id=%s localize objects=%d boxes=%d unparsed=%d completion_tokens=%d",
        request.state.request_id,
        len(plan.objects),
        len(result.boxes),
        len(result.unparsed),
        sum(c.completion_tokens for c in done),
    )
    out = result.to_dict()
    if plan.sr_source is not None:  # `medgemma.sr`: built in memory, returned, never stored or logged
        boxes = [(b.label, b.xyxy) for b in result.boxes]
        out["medgemma"] = {"sr": await state.gate.offload(regions_part, state.mg, plan.sr_source, boxes, result.preset)}
    return JSONResponse(out)
