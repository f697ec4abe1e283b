"""What every settings part shares: `OCR_*` variables, one CLI flag per field, the checks
several parts make, and the Markdown the README's configuration tables are made of.

A part is a `SettingsPart` subclass that declares fields; a program's settings are parts
composed by inheritance (`class SubmitSettings(KafkaConnection, Topics, ...)`), so a
field keeps one name, one variable and one flag wherever it is used.
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from consumer.settings import secret_files

S = TypeVar("S", bound="SettingsPart")

# Where add_settings_arguments leaves the settings type for settings_from_args.
_TYPE_DEST = "_ocr_settings_type"
_FLAG_PREFIX = "setting_"


class SettingsPart(BaseSettings):
    """Base of every part: fields are read from `OCR_<FIELD>` variables."""

    # hide_input_in_errors: a validation message would otherwise echo every value given,
    # passwords included, into the terminal or the pod log.
    model_config = SettingsConfigDict(
        env_prefix="OCR_", extra="ignore", validate_default=True, hide_input_in_errors=True
    )
    # The heading of the part in --help and in the README.
    part_title: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Secrets from OCR_<NAME>_FILE or OCR_SECRETS_DIR (secret_files.py). Placed before
        # the environment so that a variable set together with its _FILE form is refused,
        # not silently chosen.
        return (init_settings, secret_files.SecretFilesSource(settings_cls), env_settings)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # Validators are methods: in a composed class, one part's validator would silently
        # replace another's of the same name. Refuse the composition instead.
        decorators = cls.__pydantic_decorators__
        names = {*decorators.field_validators, *decorators.model_validators}
        owners: dict[str, str] = {}
        for part in cls.__mro__:
            for name in names & set(vars(part)):
                if name in owners and owners[name] != part.__name__:
                    raise TypeError(
                        f"{cls.__name__}: validator {name!r} is defined by both "
                        f"{owners[name]} and {part.__name__}; give one another name"
                    )
                owners.setdefault(name, part.__name__)


class Secrets(SettingsPart):
    """Where secret files are mounted; the parts holding a secret extend it."""

    part_title = "Secrets"

    secrets_dir: Path | None = Field(
        None, description="Folder of secret files named like the variables (a mounted k8s "
        "Secret); each secret also takes OCR_<NAME>_FILE.",
        json_schema_extra={"short": "Folder of secret files (a mounted k8s Secret)."},
    )

    @field_validator("secrets_dir")
    @classmethod
    def _secrets_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_dir():
            raise ValueError(f"{value} is not a folder; mount the secrets there or unset it")
        return value


def env_name(field: str) -> str:
    return f"OCR_{field.upper()}"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


# --- checks shared by parts ---------------------------------------------------------------


def absolute_path(path: Path) -> Path:
    """`path` made absolute once, when settings load: a relative root would name another
    folder in every working directory, so ocr-submit started elsewhere would hand files to
    a folder the consumer never reads, and messages could not say which folder was meant.
    `~` is expanded; symlinks are left for the fetch to resolve on every read."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def empty_is_unset(value: Any) -> Any:
    """An empty variable (a Secret or ConfigMap key left blank) means unset, not "." or ""."""
    return None if isinstance(value, str) and not value.strip() else value


def not_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _existing_file(field: str, path: Path | None) -> str | None:
    """A message when `path` is set and is not a readable file, else None."""
    if path is None:
        return None
    variable = env_name(field)
    if not path.exists():
        return f"{variable}={path} does not exist; mount the file or fix the path"
    if not path.is_file():
        return f"{variable}={path} is not a file; point it at a PEM file"
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"{variable}={path} cannot be read ({exc.strerror}); make it readable"
    return None


def refuse_unused(settings: SettingsPart, fields: tuple[str, ...], why_and_fix: str) -> None:
    """Refuse settings given but never used: a user who set them expects them to act.
    `why_and_fix` says why they would not be used and what to do; `{them}` in it names
    them as "it" or "them"."""
    unused = [env_name(name) for name in fields if getattr(settings, name) is not None]
    if unused:
        them = "it" if len(unused) == 1 else "them"
        raise ValueError(f"{', '.join(unused)} set, but {why_and_fix.format(them=them)}")


def check_tls_files(settings: SettingsPart, client: str) -> None:
    """`<client>_ssl_*`: a key needs its certificate, and every file named must be there."""
    names = [f"{client}_ssl_{part}" for part in ("cafile", "certfile", "keyfile")]
    certfile, keyfile = names[1:]
    if getattr(settings, keyfile) is not None and getattr(settings, certfile) is None:
        raise ValueError(
            f"{env_name(keyfile)} is set without {env_name(certfile)}; a client key needs its "
            "certificate"
        )
    problems = [_existing_file(name, getattr(settings, name)) for name in names]
    if any(problems):
        raise ValueError("; ".join(problem for problem in problems if problem))


# --- parts of a composed settings type ----------------------------------------------------


def own_fields(part: type[SettingsPart]) -> list[str]:
    """The fields `part` declares itself, in their order."""
    declared = inspect.get_annotations(part)
    return [name for name in declared if name in part.model_fields]


def parts_of(settings_type: type[SettingsPart]) -> list[type[SettingsPart]]:
    """The parts `settings_type` is composed of, in the order its bases name them (a part
    extending another comes after it)."""
    ordered: list[type[SettingsPart]] = []

    def visit(cls: type) -> None:
        for base in cls.__bases__:
            visit(base)
        if issubclass(cls, SettingsPart) and own_fields(cls) and cls not in ordered:
            ordered.append(cls)

    visit(settings_type)
    # visit() lists the deepest bases first; restore the order the bases were written in,
    # keeping a part after the parts it extends.
    mro = [cls for cls in settings_type.__mro__ if cls in ordered]
    result: list[type[SettingsPart]] = []

    def place(part: type[SettingsPart]) -> None:
        for base in part.__mro__[1:]:
            if base in ordered and base not in result:
                place(base)
        if part not in result:
            result.append(part)

    for part in mro:
        place(part)
    return result


# --- command line --------------------------------------------------------------------------


class SettingsHelpFormatter(argparse.HelpFormatter):
    """Help that stays short: the usage line says `[settings]` instead of listing every
    settings flag (they are listed below it, by part), and flags get a wider column."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_help_position", 32)
        super().__init__(prog, **kwargs)

    def add_usage(
        self, usage: str | None, actions: Iterable[argparse.Action],
        groups: Iterable[argparse._MutuallyExclusiveGroup], prefix: str | None = None,
    ) -> None:
        actions = list(actions)
        own = [a for a in actions if not a.dest.startswith(_FLAG_PREFIX)]
        if len(own) < len(actions):
            own.append(_ANY_SETTING)
        super().add_usage(usage, own, groups, prefix)


# Stands for every settings flag in the usage line: "[--<setting> V]".
_ANY_SETTING = argparse.Action(option_strings=["--<setting>"], dest="_any_setting", metavar="V")

SETTINGS_TITLE = "settings (each also an OCR_* variable: --log-level is OCR_LOG_LEVEL; flags win)"
SETTINGS_EPILOG = "Settings are also OCR_* variables (--log-level is OCR_LOG_LEVEL); flags win."


def short_help(info: Any) -> str:
    """A field's line in --help: its `short` text where the description is too long for
    one (the README's tables keep the whole description)."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("short") or info.description or "")


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """`--version` on a command: every tool prints its name and the package version."""
    from consumer import __version__

    parser.add_argument(
        "--version", action="version", version=f"%(prog)s (ocr-stream {__version__})"
    )


def add_settings_arguments(
    parser: argparse.ArgumentParser, settings_type: type[SettingsPart], *,
    by_part: bool = False,
) -> None:
    """One flag per field of `settings_type`; flags override variables, and
    `settings_from_args` then builds that type. `by_part`: one help section per part (for
    the consumer's long list), else one section (a tool's --help stays a screen long)."""
    parser.formatter_class = SettingsHelpFormatter
    parser.set_defaults(**{_TYPE_DEST: settings_type})
    group = None if by_part else parser.add_argument_group(SETTINGS_TITLE)
    for part in parts_of(settings_type):
        if by_part:
            group = parser.add_argument_group(f"{part.part_title or part.__name__} settings")
        assert group is not None
        for name in own_fields(part):
            if name in secret_files.SECRET_FLAG_FIELDS:
                group.add_argument(
                    flag_name(name), dest=f"{_FLAG_PREFIX}{name}", default=None, metavar="V",
                    # Refused, so not offered: --help stays a screen long.
                    action=secret_files.RefuseSecretFlag, help=argparse.SUPPRESS,
                )
                continue
            group.add_argument(
                flag_name(name), dest=f"{_FLAG_PREFIX}{name}", default=None, metavar="V",
                help=short_help(settings_type.model_fields[name]).replace("%", "%%"),
            )
    if by_part:
        parser.epilog = parser.epilog or SETTINGS_EPILOG


def settings_from_args(
    args: argparse.Namespace, settings_type: type[S] | None = None
) -> S:
    """The settings of `args`' parser (or `settings_type`): flags given, then `OCR_*`
    variables, then defaults. Raises pydantic's ValidationError naming each bad field."""
    chosen = settings_type or getattr(args, _TYPE_DEST, None)
    if chosen is None:
        raise TypeError("no settings type: add_settings_arguments(parser, type) first")
    overrides = {
        name: getattr(args, f"{_FLAG_PREFIX}{name}")
        for name in chosen.model_fields
        if getattr(args, f"{_FLAG_PREFIX}{name}", None) is not None
    }
    settings: S = chosen(**overrides)
    return settings


# --- README ----------------------------------------------------------------------------------


def _shown_default(info: Any) -> str:
    default = info.default_factory() if info.default_factory else info.default
    if isinstance(default, list):
        default = ",".join(str(item) for item in default)
    return "" if default is None else str(getattr(default, "value", default))


def markdown_table(part: type[SettingsPart]) -> str:
    """The fields `part` declares: variable, flag, default, meaning."""
    rows = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for name in own_fields(part):
        info = part.model_fields[name]
        flag = f"`{flag_name(name)}`"
        if name in secret_files.SECRET_FLAG_FIELDS:
            flag = "refused (`ps` shows it)"
        rows.append(
            f"| `{env_name(name)}` | {flag} | `{_shown_default(info)}` | {info.description} |"
        )
    return "\n".join(rows)


def markdown_tables(settings_type: type[SettingsPart]) -> str:
    """One table per part of `settings_type`, each under its title and class name."""
    sections = [
        f"**{part.part_title}** (`{part.__name__}`)\n\n{markdown_table(part)}"
        for part in parts_of(settings_type)
    ]
    return "\n\n".join(sections)
