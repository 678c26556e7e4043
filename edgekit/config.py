"""Typed configuration: frozen pydantic models with ``extra="forbid"``, and one way to report a bad one.

Step configs (:class:`edgekit.pipeline.StepConfig`), exporter configs
(:class:`edgekit.export.ExportConfig`) and :class:`edgekit.options.CompressOptions` all derive from
:class:`FrozenConfig`. :meth:`FrozenConfig.parse` validates a mapping (a recipe's step parameters,
an ``export`` section) and turns pydantic's report into one :class:`~edgekit.errors.RecipeError`
line naming the field, the value given and what is allowed::

    step 'int8': max_drop: Input should be less than or equal to 100 (given 500)
    export: tflite.io: Input should be 'float' or 'int8' (given 'int4')
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit.errors import RecipeError

__all__ = ["FrozenConfig", "explain"]

C = TypeVar("C", bound="FrozenConfig")


class FrozenConfig(BaseModel):
    """Typed, frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls: type[C], params: Mapping[str, Any], *, what: str) -> C:
        """``cls(**params)``, or a RecipeError ``"<what>: <field>: <problem> (given <value>)"`` for every bad field."""
        try:
            return cls(**params)
        except ValidationError as e:
            raise RecipeError(f"{what}: " + explain(cls, e)) from None


def explain(cls: type[BaseModel], error: ValidationError) -> str:
    """Every problem of ``error`` (raised validating ``cls``) on one line: the field, what is wrong, the value or the allowed keys."""
    problems = []
    for err in error.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(config)"
        if err["type"] == "extra_forbidden":
            fields = list(_model_at(cls, err["loc"][:-1]).model_fields)
            near = difflib.get_close_matches(str(err["loc"][-1]), fields, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(f"unknown field {loc!r}{hint}; allowed: {', '.join(sorted(fields))}")
        else:
            problems.append(f"{loc}: {err['msg']} (given {err.get('input')!r})")
    return "; ".join(problems)


def _model_at(cls: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The (nested) model class a location points into: ``("tflite",)`` in ExportOptions → TfliteConfig."""
    for part in loc:
        info = cls.model_fields.get(str(part))
        nested = info.annotation if info is not None else None
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            break
        cls = nested
    return cls
