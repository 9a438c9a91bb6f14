"""The config: read, checked against the schema, and completed with the schema's defaults.

``workflow/schemas/config.schema.yaml`` is the one place a config key's default lives.
The workflow, the ``protoseg`` command and the tests all complete a config through
:func:`validate`, so the library below them reads every key it needs directly and holds
no defaults of its own.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path

import yaml

from protoseg.errors import ConfigError, InputError

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _validator_with_defaults(schema: dict):
    """A jsonschema validator that fills in each missing property's ``default`` before
    checking it (jsonschema's documented recipe; Snakemake's ``validate(set_default=True)``
    does the same). Defaults are copied, so no two configs share a list."""
    import jsonschema

    base = jsonschema.validators.validator_for(schema)
    check_properties = base.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, property_schema in properties.items():
                if "default" in property_schema and name not in instance:
                    instance[name] = copy.deepcopy(property_schema["default"])
        yield from check_properties(validator, properties, instance, subschema)

    return jsonschema.validators.extend(base, {"properties": fill_then_check})(schema)


def validate(config: dict, schema: dict | None = None, *, require: bool = True) -> dict:
    """Check ``config`` against the schema and fill in its defaults, in place; returns it.

    The first problem raises :class:`ConfigError` naming the key, e.g. ``train.losses:
    'bcee' is not one of ['bce', 'mse', 'dice', 'bce+dice']``. ``require=False`` lets
    required keys be absent (a section completed for a library call that does not use them).
    """
    errors = schema_errors(config, schema, require=require)
    if errors:
        raise errors[0]
    return config


def schema_errors(
    config: dict, schema: dict | None = None, *, require: bool = True
) -> list[ConfigError]:
    """Every problem the schema finds in ``config`` (filling in its defaults, in place), one
    :class:`ConfigError` per problem naming its key, ordered by key."""
    validator = _validator_with_defaults(schema if schema is not None else _schema())
    errors = [
        error for error in validator.iter_errors(config) if require or error.validator != "required"
    ]
    found = []
    for error in sorted(errors, key=lambda error: [str(part) for part in error.absolute_path]):
        path = list(error.absolute_path)
        while path and isinstance(path[-1], int):  # an item of a list: name the list's key
            path.pop()
        found.append(
            ConfigError(".".join(str(part) for part in path) or "<top level>", error.message)
        )
    return found


def complete_section(name: str, values: dict | None = None) -> dict:
    """A copy of config section ``name`` (``train``, ``merge``, ...) with the schema's
    defaults filled in for every key ``values`` leaves out, checked.

    The workflow validates the whole config up front; library functions that take a
    section call this too, so a section built by hand (the command line, a notebook, a
    test) gets the same defaults from the same place. Keys it does not use may be absent.
    """
    section = copy.deepcopy(dict(values or {}))
    try:
        validate(section, _schema()["properties"][name], require=False)
    except ConfigError as error:
        key = name if error.key == "<top level>" else f"{name}.{error.key}"
        raise ConfigError(key, error.problem) from None
    return section


def section_defaults(name: str, **values) -> dict:
    """:func:`complete_section` with the given keys as keyword arguments."""
    return complete_section(name, values)


def deep_update(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def load_config(paths: Sequence[str | Path]) -> dict:
    """Read YAML config files, later ones overriding earlier ones key by key (as Snakemake's
    ``--configfile`` does), then :func:`validate` the result. Raises :class:`ConfigError` or
    :class:`InputError`.
    """
    config: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise InputError(path, f"not valid YAML: {error}") from error
        if not isinstance(loaded, dict):
            raise InputError(path, "a config file must hold a mapping of keys")
        deep_update(config, loaded)
    return validate(config)
