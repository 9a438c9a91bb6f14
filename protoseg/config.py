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


def validate(config: dict, schema: dict | None = None) -> dict:
    """Check ``config`` against the schema and fill in its defaults, in place; returns it.

    The first problem raises :class:`ConfigError` naming the key, e.g. ``train.losses.0:
    'bcee' is not one of ['bce', 'mse', 'dice', 'bce+dice']``.
    """
    validator = _validator_with_defaults(schema if schema is not None else _schema())
    errors = sorted(validator.iter_errors(config), key=lambda error: list(error.absolute_path))
    if errors:
        error = errors[0]
        key = ".".join(str(part) for part in error.absolute_path) or "<top level>"
        raise ConfigError(key, error.message)
    return config


def section_defaults(name: str, **overrides) -> dict:
    """One section (``train``, ``merge``, ...) as the schema completes it from ``overrides``.

    What a script gets for a section the user left out; tests use it to call library
    functions the way the workflow does.
    """
    section_schema = _schema()["properties"][name]
    section = copy.deepcopy(overrides)
    validate(section, section_schema)
    return section


def _deep_update(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
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
        _deep_update(config, loaded)
    return validate(config)
