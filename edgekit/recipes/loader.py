"""Reading a recipe file: YAML → :class:`~edgekit.recipes.model.Recipe`, or a RecipeError that points at the line.

The YAML is composed into nodes first (``yaml.compose`` keeps each node's line), then
constructed, then validated: the document's own sections by :mod:`edgekit.recipes.schema`, each
step's parameters by that step's config class (the same class the CLI flags fill). Every message
names the file and line, the step and the field, the allowed values and the nearest valid name::

    unknown step 'int9' in my.yaml:4 (step 2); did you mean 'int8'? Known steps: fp16, int8
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from edgekit.choices import Format
from edgekit.errors import RecipeError
from edgekit.pipeline import STEPS, StepSpec, get_step
from edgekit.recipes.model import QUANTIZE_STEPS, TOP_LEVEL_KEYS, Recipe
from edgekit.recipes.schema import DataNeeds, Gates

__all__ = ["parse_recipe", "read_recipe_file"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def read_recipe_file(path: str | Path, *, label: str | None = None, source: str | None = None) -> Recipe:
    """Load and validate the recipe at ``path``. ``label`` is how messages name the file, ``source`` how manifests do."""
    p = Path(path)
    where = label or str(path)
    if not p.exists():
        raise RecipeError(f"recipe file not found: {where}")
    if p.is_dir():
        raise RecipeError(f"{where} is a directory; pass a recipe .yaml file (or a shipped recipe's name)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe {where}: {e}") from None
    return parse_recipe(text, where, default_name=p.stem, path=p, source=source)


def parse_recipe(text: str, where: str, *, default_name: str = "recipe", path: Path | None = None, source: str | None = None) -> Recipe:
    """Validate recipe ``text``; ``where`` names it in messages (a file name)."""
    node, doc = _compose(text, where)
    loc = _Locator(where, node)
    if doc is None:
        raise RecipeError(f"{where} is empty; a recipe needs at least 'steps', e.g.\n  steps:\n    - int8: {{max_drop: 1.0}}")
    if not isinstance(doc, dict):
        raise RecipeError(
            f"{where}:{loc.line(())}: a recipe is a mapping with 'steps' (and optionally {', '.join(k for k in TOP_LEVEL_KEYS if k != 'steps')}); "
            f"got {_kind(doc)}"
        )
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise RecipeError(f"unknown key {_q(key)} in {loc.at((key,), key=True)} (recipe){_near(key, TOP_LEVEL_KEYS)} "
                              f"Allowed: {', '.join(TOP_LEVEL_KEYS)}")
    if "steps" not in doc:
        raise RecipeError(f"{where}:{loc.line(())}: missing 'steps', the list of steps to run, e.g.\n  steps:\n    - int8: {{max_drop: 1.0}}")
    name = _string(doc, "name", loc)
    if name is not None and not _NAME.match(name):
        raise RecipeError(f"invalid name {name!r} in {loc.at(('name',))} (recipe): use letters, digits, '.', '_' and '-'")
    name = name or re.sub(r"[^A-Za-z0-9._-]+", "-", default_name).strip("-.") or "recipe"
    steps = _steps(doc["steps"], loc)
    export = _export(doc.get("export"), loc)
    data = _section(DataNeeds, doc.get("data"), "data", loc)
    gates = _section(Gates, doc.get("gates"), "gates", loc)
    return Recipe(
        name=name,
        description=_string(doc, "description", loc) or "",
        steps=steps,
        export=export,
        data=data,
        gates=gates,
        source=source or (str(path) if path else where),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


# --- YAML with line numbers -------------------------------------------------------------------


def _compose(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _no_duplicate_keys(node, where)
            doc = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise RecipeError(f"{at}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: not valid YAML: {e}") from None
    return node, doc


def _no_duplicate_keys(node: yaml.Node, where: str) -> None:
    # PyYAML keeps the last of duplicate keys silently; in a recipe that hides a mistake.
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    raise RecipeError(f"duplicate key {k.value!r} in {where}:{k.start_mark.line + 1} (first at line {seen[k.value]}); "
                                      "keep one")
                seen[k.value] = k.start_mark.line + 1
            _no_duplicate_keys(v, where)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _no_duplicate_keys(v, where)


class _Locator:
    """File:line of a path of keys/indices in the composed document."""

    def __init__(self, where: str, root: yaml.Node | None) -> None:
        self.where = where
        self.root = root

    def line(self, path: tuple, *, key: bool = False) -> int:
        node = self.root
        if node is None:
            return 1
        best = node.start_mark.line + 1
        for i, part in enumerate(path):
            nxt = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                        nxt = k if (key and i == len(path) - 1) else v
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                nxt = node.value[part]
            if nxt is None:
                break
            node = nxt
            best = node.start_mark.line + 1
        return best

    def at(self, path: tuple, *, key: bool = False) -> str:
        return f"{self.where}:{self.line(path, key=key)}"


# --- sections ---------------------------------------------------------------------------------


def _string(doc: dict, key: str, loc: _Locator) -> str | None:
    v = doc.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise RecipeError(f"invalid {key} in {loc.at((key,))} (recipe): expected text, got {_kind(v)} {v!r}")
    return v.strip()


def _steps(raw: Any, loc: _Locator) -> tuple[StepSpec, ...]:
    if not isinstance(raw, list):  # an empty list is a recipe that converts and exports only (tabular pipelines stay float)
        got = f"{_kind(raw)} {raw!r}"
        raise RecipeError(f"invalid steps in {loc.at(('steps',))} (recipe): expected a list of steps, got {got}; e.g.\n"
                          "  steps:\n    - int8: {max_drop: 1.0}")
    known = sorted(STEPS)
    specs: list[StepSpec] = []
    quantized_at: tuple[str, int] | None = None
    for i, entry in enumerate(raw):
        n = i + 1
        path = ("steps", i)
        if isinstance(entry, str):
            name, params = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            name, params = next(iter(entry.items()))
            params = {} if params is None else params
        elif isinstance(entry, dict):
            keys = ", ".join(map(str, entry))
            raise RecipeError(f"step {n} in {loc.at(path)} has {len(entry)} keys ({keys}); write one step per list item, "
                              "e.g. '- int8: {max_drop: 1.0}'")
        else:
            raise RecipeError(f"step {n} in {loc.at(path)} is {_kind(entry)} {entry!r}; write a step name, or 'name: {{field: value}}'")
        if not isinstance(name, str) or name not in STEPS:
            raise RecipeError(f"unknown step {_q(name)} in {loc.at(path)} (step {n}){_near(str(name), known)} Known steps: {', '.join(known)}")
        if not isinstance(params, dict):
            raise RecipeError(f"parameters of step {n} ({name}) in {loc.at(path + (name,))} must be a mapping of field: value, "
                              f"got {_kind(params)} {params!r}")
        if quantized_at is not None:
            q, qn = quantized_at
            if name in QUANTIZE_STEPS:
                raise RecipeError(f"step {_q(name)} in {loc.at(path)} (step {n}): the recipe already quantizes with {q!r} (step {qn}); "
                                  f"a model gets one precision, keep one of {q!r} and {name!r}")
            raise RecipeError(f"step {_q(name)} in {loc.at(path)} (step {n}) comes after {q!r} (step {qn}); quantization must be the last "
                              f"step: move {name!r} before {q!r}")
        if name in QUANTIZE_STEPS:
            quantized_at = (name, n)
        cls = get_step(name).config_cls
        _validate_model(cls, params, path + (name,), f"step {n}, {name}", loc)
        specs.append(StepSpec(name, dict(params)))
    return tuple(specs)


def _export(raw: Any, loc: _Locator) -> tuple[str, ...]:
    known = Format.values()
    if raw is None:
        return ("onnx", "ort")
    if isinstance(raw, str):
        raw = [f.strip() for f in raw.split(",") if f.strip()]
    if not isinstance(raw, list) or not raw:
        raise RecipeError(f"invalid export in {loc.at(('export',))} (export): expected a list of formats, e.g. [onnx, ort]; "
                          f"allowed: {', '.join(known)}")
    seen: list[str] = []
    for i, fmt in enumerate(raw):
        if fmt not in known:
            raise RecipeError(f"unknown export format {_q(fmt)} in {loc.at(('export', i))} (export){_near(str(fmt), known)} "
                              f"Allowed: {', '.join(known)}")
        if fmt in seen:
            raise RecipeError(f"export format {fmt!r} in {loc.at(('export', i))} (export) is listed twice; keep one")
        seen.append(fmt)
    return tuple(seen)


def _section(cls: type[BaseModel], raw: Any, key: str, loc: _Locator):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise RecipeError(f"invalid {key} in {loc.at((key,))} ({key}): expected a mapping of field: value, got {_kind(raw)} {raw!r}. "
                          f"Allowed fields: {', '.join(cls.model_fields)}")
    return _validate_model(cls, raw, (key,), key, loc)


def _validate_model(cls: type[BaseModel], params: dict, path: tuple, context: str, loc: _Locator):
    """``cls(**params)``, or the first problem as a RecipeError pointing at its line."""
    try:
        return cls(**params)
    except ValidationError as e:
        raise RecipeError(_explain(e.errors()[0], cls, params, path, context, loc)) from None
    except TypeError as e:  # e.g. a non-string key: ``1: x``
        raise RecipeError(f"invalid parameters in {loc.at(path)} ({context}): {e}") from None


def _explain(err: dict, cls: type[BaseModel], params: dict, path: tuple, context: str, loc: _Locator) -> str:
    field = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"]).lstrip(".")
    top = str(err["loc"][0]) if err["loc"] else ""
    allowed = list(cls.model_fields)
    if err["type"] == "extra_forbidden":
        return (f"unknown field {_q(top)} in {loc.at(path + (top,), key=True)} ({context}){_near(top, allowed)} "
                f"Allowed: {', '.join(allowed)}")
    if err["type"] == "missing":
        return f"missing field {field!r} in {loc.at(path)} ({context}): {_describe(cls, top)}"
    given = err.get("input")
    choices = _choices(err)
    at = loc.at(path + tuple(err["loc"]))
    if choices:
        return f"invalid value {given!r} for {field!r} in {at} ({context}); allowed: {', '.join(choices)}{_near(str(given), choices, sep=';')}"
    msg = err["msg"]
    if err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    else:
        msg = msg[0].lower() + msg[1:]
    about = _describe(cls, top)
    return f"invalid value {given!r} for {field!r} in {at} ({context}): {msg}" + (f". {about}" if about else "")


def _choices(err: dict) -> list[str]:
    ctx = err.get("ctx") or {}
    if err["type"] in ("enum", "literal_error") and "expected" in ctx:
        return re.findall(r"'([^']*)'", str(ctx["expected"]))
    if err["type"] == "string_pattern_mismatch":
        m = re.fullmatch(r"\^\(([\w|.-]+)\)\$", str(ctx.get("pattern", "")))
        if m:
            return m.group(1).split("|")
    return []


def _describe(cls: type[BaseModel], field: str) -> str:
    info = cls.model_fields.get(field)
    return f"{field}: {info.description}" if info is not None and info.description else ""


# --- wording helpers ----------------------------------------------------------------------------


def _near(name: str, options, *, sep: str = ";") -> str:
    near = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f"{sep} did you mean {near[0]!r}?" if near else "."


def _q(x: Any) -> str:
    return repr(x) if isinstance(x, str) else repr(str(x))


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", int: "a number", float: "a number", bool: "true/false"}.get(type(v), type(v).__name__)
