"""Checks shared by both endpoints: the model name, unknown fields (logged once), the choices' params."""

from __future__ import annotations

import dataclasses
import logging

from helix.engine.sampling_params import SamplingParams
from helix.server.errors import APIError

log = logging.getLogger("helix.server")


def check_model(runtime, model: str) -> None:
    """404 unless `model` is the served model's name."""
    if model != runtime.model_name:
        raise APIError(
            404,
            f"The model `{model}` does not exist; this server serves `{runtime.model_name}`",
            "not_found_error",
            "model",
            "model_not_found",
        )


def note_unknown_fields(app_state, route: str, body) -> None:
    """Log each field the API does not know, once per server and route (it is ignored)."""
    seen: set = app_state.unknown_fields_logged
    for name in body.unknown_fields():
        if (route, name) not in seen:
            seen.add((route, name))
            log.warning("%s: ignoring unknown field %r (logged once)", route, name)


def choice_params(body, params: SamplingParams) -> list[SamplingParams]:
    """`SamplingParams` of each of the `n` choices (distinct seeds when a seed is given)."""
    return [params] + [dataclasses.replace(params, seed=body.choice_seed(i)) for i in range(1, body.n)]
