"""Which model the challenger must not be worse than: `eval.champion`, resolved when the run starts.

- `auto` (the default): the registered model's `champion` alias, looked up in the registry at
  each run (a scheduled run compares with whatever serves that week). "No champion yet" only
  when the registry answers that the model or the alias does not exist.
- `none`: no champion comparison, on purpose.
- `models:/NAME@ALIAS`, `models:/NAME/VERSION` or an adapter folder: that model. A reference
  that does not exist is bad input (ChampionError, one line).

Under `auto`, a champion that exists but cannot be looked up, fetched, verified or evaluated is
recorded as `failed` with its reason, and the gate fails closed on it: a scheduled retrain never
replaces the serving model because the registry was down.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

AUTO = "auto"
NONE = "none"

RESOLVED = "resolved"  # a champion was found and fetched: the gate compares with it
ABSENT = "absent"  # the registry answered: no champion yet
SKIPPED = "skipped"  # eval.champion=none
FAILED = "failed"  # a champion exists (or may) and could not be compared: the gate refuses


class ChampionError(ValueError):
    """`eval.champion` names something that does not exist; the message is one line."""


@dataclass
class Champion:
    """The outcome of resolving `eval.champion` (recorded in evaluate's results as `champion_resolution`)."""

    setting: str
    status: str
    reason: str
    uri: str = ""  # the immutable reference compared with (models:/NAME/VERSION or a folder)
    version: str = ""
    path: str = ""  # the local adapter folder, when resolved

    def to_dict(self) -> dict:
        return asdict(self)

    def failed(self, reason: str) -> "Champion":
        """The same champion, now unusable (it could not be evaluated, say)."""
        return Champion(self.setting, FAILED, reason, self.uri, self.version, "")


def resolve(setting: str, registered_model: str, tracking_uri: str, dest: str | Path | None = None) -> Champion:
    """`eval.champion` -> a Champion; raises ChampionError only for an explicit reference that does not exist."""
    setting = (setting or AUTO).strip()
    if setting.lower() == NONE:
        return Champion(setting, SKIPPED, "eval.champion=none: no champion comparison, on purpose")
    if setting.lower() == AUTO:
        if not registered_model:
            raise ChampionError("eval.champion=auto: the registered model's name is needed to find its champion")
        return _resolve_alias(setting, registered_model, tracking_uri, dest)
    if setting.startswith("models:/"):
        return _resolve_reference(setting, tracking_uri, dest)
    path = Path(setting)
    if not (path / "adapter_config.json").is_file():
        raise ChampionError(f"eval.champion: {setting} is neither auto, none, a models:/ URI nor an adapter folder")
    return Champion(setting, RESOLVED, f"adapter folder {path}", uri=str(path), path=str(path))


def _resolve_alias(setting: str, name: str, tracking_uri: str, dest) -> Champion:
    from modelchain.core import registry

    try:
        mlflow_client = registry.client(tracking_uri)
        model = registry.get_registered_model(mlflow_client, name)
    except registry.RegistryError as exc:
        if isinstance(exc, registry.NotRegistered):  # the registry answered: no such model
            return Champion(setting, ABSENT, f"no champion yet: the registry has no model {name!r}")
        return Champion(setting, FAILED, f"the champion of {name!r} could not be looked up: {exc}")
    except Exception as exc:  # noqa: BLE001 (any failure to ask the registry fails closed)
        return Champion(setting, FAILED, f"the champion of {name!r} could not be looked up: {_one_line(exc)}")
    version = registry.aliases(model).get(registry.CHAMPION)
    if version is None:
        return Champion(setting, ABSENT, f"no champion yet: model {name!r} has no alias {registry.CHAMPION!r}")
    uri = f"models:/{name}/{version}"
    try:
        folder = registry.resolve_adapter(uri, dest, tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001 (fetch or verification failed: fail closed, with the reason)
        return Champion(setting, FAILED, f"champion {uri} could not be fetched or verified: {_one_line(exc)}",
                        uri=uri, version=str(version))
    return Champion(setting, RESOLVED, f"champion {uri} (alias {name}@{registry.CHAMPION})", uri=uri,
                    version=str(version), path=str(folder))


def _resolve_reference(setting: str, tracking_uri: str, dest) -> Champion:
    from modelchain.core import registry

    try:
        ref = registry.ModelRef.parse(setting.removeprefix("models:/"))
    except registry.RegistryError as exc:
        raise ChampionError(f"eval.champion: {exc}") from exc
    try:
        mlflow_client = registry.client(tracking_uri)
        version = registry.get_version(mlflow_client, ref)
    except registry.NotRegistered as exc:  # the registry answered: that model, alias or version does not exist
        raise ChampionError(f"eval.champion: {setting}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 (the registry could not be asked: fail closed)
        return Champion(setting, FAILED, f"eval.champion {setting} could not be looked up: {_one_line(exc)}")
    uri = f"models:/{version.name}/{version.version}"
    try:
        folder = registry.resolve_adapter(uri, dest, tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001
        return Champion(setting, FAILED, f"champion {uri} could not be fetched or verified: {_one_line(exc)}",
                        uri=uri, version=str(version.version))
    return Champion(setting, RESOLVED, f"champion {uri} (eval.champion={setting})", uri=uri,
                    version=str(version.version), path=str(folder))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]
