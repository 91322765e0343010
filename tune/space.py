"""Search spaces: the YAML schema, its validation against `Config`, and Optuna's define-by-run function.

A space file (search_spaces/*.yaml) looks like

    description: what this space is for
    hardware: cpu               # what it is sized for: cpu | gpu (a search without a GPU never picks a gpu space)
    fixed:                      # config overrides applied to every trial (dotted Config names)
      train.batch_size: 256
    params:                     # sampled per trial, in this order (define-by-run, spec §6)
      model.dim: {type: categorical, values: [64, 128]}
      train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      model.n_enc_layers: {type: int, low: 1, high: 3}
      model.lambda_u: {type: float, low: 1.0e-3, high: 1.0, log: true,
                       when: {model.xt_injection: add}}      # conditional parameter
      diffusion.cfg_w: {type: float, low: 0.0, high: 4.0, when: {diffusion.cfg_p: {gt: 0}}}

`when` maps a config field to a value (equal), a list (one of) or one operator
{eq, ne, in, not_in, gt, ge, lt, le}; all entries must hold. A referenced field that is itself
sampled must be listed earlier. Everything is checked before Ray starts (`load_space`): names
against `Config.field_names()`, value types against the field's annotation, ranges, `when`
references, and that fixed + sampled values give a valid `Config` for every pair of parameter
extremes (this catches e.g. `model.n_heads` values that do not divide a `model.dim` value).
The names are checked in `_check_name` (fixed values and parameters, `parse_space`; --set values,
`SearchSpace.with_fixed`) and `_check_when_refs` (`when` references).

Which space a search uses without --space, and what a dataset-agnostic one takes from the dataset card:
tune/space_choice.py.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from dpgdiff.config import Config, ConfigError, coerce_value, model_reads, parse_yaml, read_yaml

TYPES = ("categorical", "int", "float")
_SPEC_KEYS = {
    "categorical": {"type", "values", "when", "help"},
    "int": {"type", "low", "high", "log", "step", "when", "help"},
    "float": {"type", "low", "high", "log", "step", "when", "help"},
}
_TOP_KEYS = {"description", "hardware", "fixed", "params"}
HARDWARE = ("cpu", "gpu")  # a space's `hardware:`; a space without it counts as CPU-sized
_CANNOT_OCCUR = "(combination cannot occur)"  # a check whose varied parameter is inactive
_OPS = ("eq", "ne", "in", "not_in", "gt", "ge", "lt", "le")
# Fields the search CLI owns: ASHA needs train.epochs to be the same for every trial.
_CLI_OWNED = {"train.epochs": "--epochs"}


class SpaceError(ValueError):
    """A search space is invalid; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class Condition:
    """One `when` entry: `field op value`, checked against the values chosen so far."""

    field: str
    op: str
    value: Any

    def holds(self, values: dict[str, Any]) -> bool:
        v = values.get(self.field)
        if self.op == "eq":
            return v == self.value
        if self.op == "ne":
            return v != self.value
        if self.op == "in":
            return v in self.value
        if self.op == "not_in":
            return v not in self.value
        if v is None:  # comparisons with an unset Optional field never hold
            return False
        return {"gt": v > self.value, "ge": v >= self.value, "lt": v < self.value, "le": v <= self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value!r}"


@dataclass(frozen=True)
class Param:
    """One sampled hyperparameter (a dotted Config field)."""

    name: str
    type: str  # categorical | int | float
    values: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    when: tuple[Condition, ...] = ()

    def active(self, values: dict[str, Any]) -> bool:
        return all(c.holds(values) for c in self.when)

    def suggest(self, trial: Any) -> Any:
        """Ask an optuna.Trial (or Ray's wrapper of one) for a value."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def distribution(self) -> Any:
        """The optuna distribution `suggest` uses (to rebuild a study from finished trials)."""
        import optuna.distributions as od

        if self.type == "categorical":
            return od.CategoricalDistribution(list(self.values))
        if self.type == "int":
            return od.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return od.FloatDistribution(float(self.low), float(self.high), step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        """The values whose combinations `load_space` checks: every category, or both ends of a range."""
        if self.type == "categorical":
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def describe(self) -> str:
        if self.type == "categorical":
            text = f"one of {list(self.values)}"
        else:
            text = f"{self.type} in [{self.low}, {self.high}]" + (" log" if self.log else "")
            text += f" step {self.step}" if self.step else ""
        if self.when:
            text += " when " + " and ".join(str(c) for c in self.when)
        return text


@dataclass
class SearchSpace:
    """A validated space: fixed overrides plus ordered parameters; callable as define-by-run."""

    source: str  # file name, for messages
    params: dict[str, Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    text: str = ""  # the YAML as written (logged to MLflow)
    hardware: str = "cpu"  # what its sizes are for (HARDWARE)
    _base: Optional[dict[str, Any]] = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ sampling

    def __call__(self, trial: Any) -> None:
        """Optuna define-by-run: suggest each active parameter in file order (spec §6)."""
        values = self.base_values()
        for p in self.params.values():
            if p.active(values):
                values[p.name] = p.suggest(trial)
        return None

    def base_values(self) -> dict[str, Any]:
        """Flat dotted values of the defaults with `fixed` applied (what `when` sees for unsampled fields).

        Only types are checked here: a fixed value may need a sampled one to be valid (fixed
        n_heads=3 with sampled dims 48/96), so validity is checked per combination instead."""
        if self._base is None:
            fields = Config.field_names()
            base = flatten(Config().to_dict())
            for key, value in self.fixed.items():
                if key not in fields:
                    raise SpaceError(f"{self.source}: fixed.{key}: unknown config field")
                try:
                    base[key] = coerce_value(value, fields[key], key, f"{self.source}: fixed")
                except ConfigError as exc:
                    raise SpaceError(str(exc)) from None
            self._base = base
        return dict(self._base)

    def resolve(self, sampled: dict[str, Any], source: str = "trial") -> Config:
        """The Config a trial trains with: defaults < fixed < sampled."""
        unknown = [k for k in sampled if k not in self.base_values()]
        if unknown:
            raise ConfigError(f"{self.source}: {source}: unknown config field(s) {unknown}")
        # Only what the space sets: a default the model never reads must not count as "set" (Config.check_declared).
        fixed = {k: v for k, v in self.base_values().items() if k in self.fixed}
        return Config().with_overrides({**fixed, **sampled}, source=f"{self.source}: {source}")

    def distributions(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Optuna distributions of the parameters present in `sampled` (the active ones)."""
        return {k: self.params[k].distribution() for k in sampled if k in self.params}

    def with_fixed(self, overrides: dict[str, Any], source: str = "--set") -> "SearchSpace":
        """Return a copy with more fixed values; a fixed parameter leaves the search."""
        fields = Config.field_names()
        for key, value in overrides.items():  # the overrides' own names and types: blame `source`, not the file
            _check_name(key, fields, source, "")
            try:
                coerce_value(value, fields[key], key, source)
            except ConfigError as exc:
                raise SpaceError(f"{exc} (field type {_type_name(fields[key])})") from None
        fixed = {**self.fixed, **overrides}
        params = {k: p for k, p in self.params.items() if k not in overrides}
        space = SearchSpace(self.source, params, fixed, self.description, self.text, self.hardware)
        base = space.base_values()
        # A parameter whose condition the new fixed values rule out is simply not sampled.
        space.params = {k: p for k, p in params.items()
                        if all(c.field in params or c.holds(base) for c in p.when)}
        try:
            _check_when_refs(space, source)
            _check_combinations(space)
        except SpaceError as exc:  # name the command-line override, not the file, when it is the culprit
            message = str(exc)
            for key in overrides:
                message = message.replace(f"{self.source}: fixed.{key}:", f"{source} {key}:")
            raise SpaceError(message) from None
        return space

    def summary(self) -> str:
        lines = [f"search space {self.source}: {len(self.params)} parameters"]
        width = max((len(k) for k in self.params), default=0)
        lines += [f"  {k:<{width}}  {p.describe()}" for k, p in self.params.items()]
        if self.fixed:
            lines.append("  fixed: " + ", ".join(f"{k}={v!r}" for k, v in self.fixed.items()))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- loading


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file; raises SpaceError naming the file, key and problem."""
    data, text = read_yaml(path, "search space", SpaceError)
    return parse_space(data, source=str(path), text=text)


def space_from_text(text: str, source: str) -> SearchSpace:
    """Parse and validate a space from its YAML text (e.g. as saved with a search); errors name `source`."""
    return parse_space(parse_yaml(text, source, SpaceError), source=source, text=text)


def parse_space(data: Any, source: str = "space", text: str = "") -> SearchSpace:
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: expected a mapping with keys {sorted(_TOP_KEYS)}, got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SpaceError(f"{source}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    fields = Config.field_names()

    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpaceError(f"{source}: 'fixed' must be a mapping of config field -> value")
    for key in fixed:
        _check_name(key, fields, source, "fixed")

    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise SpaceError(f"{source}: 'params' must be a non-empty mapping of config field -> distribution")
    params: dict[str, Param] = {}
    for name, spec in raw_params.items():
        where = f"{source}: params.{name}"
        _check_name(name, fields, source, "params")
        if name in _CLI_OWNED:
            raise SpaceError(f"{where}: is set by the search CLI ({_CLI_OWNED[name]}), not sampled")
        if name in fixed:
            raise SpaceError(f"{where}: is also under 'fixed'; keep it in one place")
        params[name] = _parse_param(name, spec, fields[name], where)

    hardware = data.get("hardware", "cpu")
    if hardware not in HARDWARE:
        raise SpaceError(f"{source}: hardware: {hardware!r} is not one of {list(HARDWARE)}")
    space = SearchSpace(source, params, dict(fixed), str(data.get("description") or ""), text, hardware)
    _check_when_refs(space, source)
    _check_read_by_model(space)
    _check_combinations(space)
    return space


def _check_read_by_model(space: SearchSpace) -> None:
    """Every fixed and sampled field is one the space's model reads (config.MODEL_FIELDS), named before Ray starts."""
    if "model.name" in space.params:
        return  # a space that samples the model: each trial's config is checked as it is resolved
    model = space.base_values()["model.name"]
    for section, names in (("fixed", space.fixed), ("params", space.params)):
        unread = [name for name in names if not model_reads(model, name)]
        if unread:
            raise SpaceError(f"{space.source}: {section}.{unread[0]}: model.name={model!r} does not read "
                             f"{', '.join(unread)}; remove {'it' if len(unread) == 1 else 'them'} "
                             "(dpgdiff/config_fields.py MODEL_FIELDS lists what each model reads)")


def _check_name(name: Any, fields: dict[str, Any], source: str, section: str) -> None:
    if not isinstance(name, str) or name not in fields:
        close = difflib.get_close_matches(str(name), list(fields), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; names are section.field as in dpgdiff/config.py"
        raise SpaceError(f"{source}: {section + '.' if section else ''}{name}: unknown config field{hint}")


def _parse_param(name: str, spec: Any, hint: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: expected a mapping like {{type: float, low: ..., high: ...}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise SpaceError(f"{where}: type {kind!r} is not one of {list(TYPES)}")
    extra = set(spec) - _SPEC_KEYS[kind]
    if extra:
        raise SpaceError(f"{where}: unknown key(s) {sorted(extra)} for type {kind}; allowed: {sorted(_SPEC_KEYS[kind])}")
    base = _base_type(hint)
    when = _parse_when(spec.get("when"), where)

    if kind == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: categorical needs a non-empty list 'values'")
        coerced = []
        for v in values:
            try:
                coerced.append(coerce_value(v, hint, name, where))
            except ConfigError as exc:
                raise SpaceError(f"{exc} (field type {_type_name(hint)})") from None
        if len(set(map(repr, coerced))) != len(coerced):
            raise SpaceError(f"{where}: 'values' has duplicates: {values}")
        return Param(name, kind, tuple(coerced), when=when)

    # int / float ranges
    if kind == "int" and base is not int:
        raise SpaceError(f"{where}: type int does not fit field type {_type_name(hint)}"
                         + ("; use type float" if base is float else "; use type categorical"))
    if kind == "float" and base is not float:
        raise SpaceError(f"{where}: type float does not fit field type {_type_name(hint)}"
                         + ("; use type int" if base is int else "; use type categorical"))
    for key in ("low", "high"):
        if key not in spec:
            raise SpaceError(f"{where}: type {kind} needs '{key}'")
    low, high = _number(spec["low"], kind, where, "low"), _number(spec["high"], kind, where, "high")
    if not low < high:
        raise SpaceError(f"{where}: empty range: low={low} must be < high={high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: 'log' must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}: bad log range: low={low} must be > 0 with log: true")
    step = spec.get("step")
    if step is not None:
        step = _number(step, kind, where, "step")
        if step <= 0:
            raise SpaceError(f"{where}: 'step' must be > 0, got {step}")
        if log:
            raise SpaceError(f"{where}: 'step' and 'log: true' cannot be combined (optuna)")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _number(value: Any, kind: str, where: str, key: str) -> int | float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise SpaceError(f"{where}: '{key}' must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise SpaceError(f"{where}: '{key}' must be an integer for type int, got {value!r}")
        return int(value)
    return float(value)


def _parse_when(raw: Any, where: str) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{where}: 'when' must be a mapping like {{model.xt_injection: add}}")
    out = []
    for ref, cond in raw.items():
        if isinstance(cond, dict):
            if len(cond) != 1 or next(iter(cond)) not in _OPS:
                raise SpaceError(f"{where}: when.{ref}: expected one operator of {list(_OPS)}, got {cond!r}")
            op, value = next(iter(cond.items()))
        elif isinstance(cond, list):
            op, value = "in", cond
        else:
            op, value = "eq", cond
        if op in ("in", "not_in") and (not isinstance(value, list) or not value):
            raise SpaceError(f"{where}: when.{ref}: '{op}' needs a non-empty list, got {value!r}")
        out.append(Condition(str(ref), op, tuple(value) if isinstance(value, list) else value))
    return tuple(out)


def _check_when_refs(space: SearchSpace, source: str) -> None:
    """Each `when` names a config field whose type fits the compared value; sampled refs come first."""
    fields = Config.field_names()
    order = list(space.params)
    for i, (name, p) in enumerate(space.params.items()):
        where = f"{space.source}: params.{name}.when"
        for c in p.when:
            if c.field not in fields:
                close = difflib.get_close_matches(c.field, list(fields), n=3)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise SpaceError(f"{where}: {c.field!r} is not a config field{hint}")
            if c.field == name:
                raise SpaceError(f"{where}: a parameter cannot depend on itself")
            if c.field in space.params and order.index(c.field) > i:
                raise SpaceError(f"{where}: refers to {c.field!r}, which is sampled later; list it before {name!r}")
            hint = fields[c.field]
            compared = c.value if c.op in ("in", "not_in") else (c.value,)
            for v in compared:
                try:
                    coerce_value(v, hint, c.field, where)
                except ConfigError as exc:
                    raise SpaceError(f"{exc} (compared value has the wrong type for {_type_name(hint)})") from None
            if c.op in ("gt", "ge", "lt", "le") and _base_type(hint) not in (int, float):
                raise SpaceError(f"{where}: '{c.op}' needs a numeric field; {c.field} is {_type_name(hint)}")
            if c.field not in space.params and not c.holds(space.base_values()):
                raise SpaceError(f"{where}: {c} never holds ({c.field} is fixed to "
                                 f"{space.base_values()[c.field]!r}), so {name} would never be sampled")


def _check_combinations(space: SearchSpace) -> None:
    """Every parameter extreme, and every pair of extremes, must give a valid Config.

    Config's cross-field rules (n_heads divides dim, infer_steps <= steps, ...) involve two
    fields each, so checking all pairs of extremes on top of the fixed values finds a bad
    combination before any trial runs. Inactive conditional parameters are left out, as in a trial.
    """
    names = list(space.params)
    first = {n: space.params[n].extremes()[0] for n in names}

    base_values = space.base_values()
    base = Config()  # filled without validation: validity is what each check decides
    for dotted, value in base_values.items():
        section, key = dotted.split(".", 1)
        setattr(getattr(base, section), key, value)
    sections = [f.name for f in dataclasses.fields(Config)]

    def check(chosen: dict[str, Any]) -> Optional[str]:
        """None if valid; else Config's complaint. Unchosen parameters sit at their first value."""
        values = dict(base_values)
        config = Config(**{s: copy.copy(getattr(base, s)) for s in sections})  # cheap: no re-parsing
        for n in names:
            p = space.params[n]
            v = chosen.get(n, first[n])
            if p.active(values):
                values[n] = v
                section, key = n.split(".", 1)
                setattr(getattr(config, section), key, v)  # values were type-checked when parsed
            elif n in chosen:
                return _CANNOT_OCCUR  # the varied parameter is inactive here
        try:
            config.validate(space.source)
        except ConfigError as exc:
            return str(exc).split(": ", 1)[-1]
        return None

    def fail(chosen: dict[str, Any], problem: str) -> None:
        combo = ", ".join(f"{k}={v!r}" for k, v in chosen.items())
        culprit = re.match(r"([a-z_]+\.[a-z_0-9]+)=", problem)
        if culprit and culprit.group(1) in space.fixed and culprit.group(1) not in chosen:
            key = culprit.group(1)
            try:  # wrong on its own, whatever is sampled?
                Config().with_overrides({key: space.fixed[key]})
            except ConfigError:
                raise SpaceError(f"{space.source}: fixed.{key}: {problem}") from None
            combo += f" with fixed {key}={space.fixed[key]!r}"
        key = " / ".join(f"params.{k}" for k in chosen)
        raise SpaceError(f"{space.source}: {key}: the combination {combo} gives an invalid config: {problem}; "
                         "change the values or add a 'when' condition")

    for n in names:
        for v in space.params[n].extremes():
            problem = check({n: v})
            if problem is None or problem is _CANNOT_OCCUR:
                continue
            # A value that is fine next to some value of another parameter: that pair is the culprit.
            for m in names:
                if m != n and any(check({n: v, m: w}) is None for w in space.params[m].extremes()):
                    pair = {k: ({n: v, m: first[m]}[k]) for k in names if k in (n, m)}  # file order
                    fail(pair, problem)
            fail({n: v}, problem)
    for a, b in itertools.combinations(names, 2):
        for va, vb in itertools.product(space.params[a].extremes(), space.params[b].extremes()):
            problem = check({a: va, b: vb})
            if problem is not None and problem is not _CANNOT_OCCUR:
                fail({a: va, b: vb}, problem)


# ---------------------------------------------------------------------------------- helpers


def flatten(nested: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"model": {"dim": 64}} -> {"model.dim": 64}."""
    return {f"{s}.{k}": v for s, section in nested.items() for k, v in section.items()}


def _base_type(hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Union:
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(inner[0]) if len(inner) == 1 else hint
    if typing.get_origin(hint) is Literal:
        return Literal
    return hint


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + "/".join(map(str, typing.get_args(hint)))
    base = _base_type(hint)
    name = getattr(base, "__name__", str(base))
    return f"optional {name}" if base is not hint else name
