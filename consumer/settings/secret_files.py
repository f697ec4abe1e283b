"""Secrets read from files, so that no password has to sit in an environment variable or on
a command line (where `ps` shows it to every user of the host).

Two ways, for the settings in `SECRET_FIELDS`:

- `OCR_<NAME>_FILE=/path`: the file holds the value (Docker and compose secrets, systemd
  credentials, a Vault agent's rendered file);
- `OCR_SECRETS_DIR=/folder`: a folder of files named like the variables,
  `/folder/OCR_REDIS_PASSWORD`, as Kubernetes mounts a Secret volume whose keys are the
  variable names (deploy/k8s/secret.example.yaml).

Every settings part reads them (`SettingsPart` lists the source), and the parts holding a
secret check what it found (`check_secret`).

Precedence, highest first: a flag, `OCR_<NAME>`, `OCR_<NAME>_FILE`, the secrets folder, the
default. `OCR_<NAME>` and `OCR_<NAME>_FILE` together are refused: which one wins would be a
guess. One trailing newline is dropped (`echo secret > file` writes one); nothing else is.

The password flags (`SECRET_FLAG_FIELDS`) are refused (`RefuseSecretFlag`), since a flag is
visible to everyone who can list processes; a user name's flag stays.

What this does not do: watch the files. A rotated secret is read at the next start, as a
changed environment variable would be.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

# The user name travels with its password (the same Secret), so it may come from a file too.
# Likewise the OAuth client id with its secret.
SECRET_FIELDS = (
    "kafka_sasl_username", "kafka_sasl_password", "kafka_oauth_client_id",
    "kafka_oauth_client_secret", "redis_password",
)
# Only settings whose value is a secret are refused as flags; a user name is not one.
SECRET_FLAG_FIELDS = (
    "kafka_sasl_password", "kafka_oauth_client_secret", "redis_password",
)
SECRETS_DIR_FIELD = "secrets_dir"
FILE_SUFFIX = "_FILE"


def variable(field: str) -> str:
    return f"OCR_{field.upper()}"


class SecretProblem(str):
    """A secret that cannot be read (or is given twice): the source hands this message on
    as the field's value, and `check_secret` (a validator of Settings) raises it, so the
    problem is reported like any invalid setting (a ValidationError naming the variable)."""


def check_secret(value: Any) -> Any:
    if isinstance(value, SecretProblem):
        raise ValueError(str(value))
    return value


def _read(path: Path, named_by: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return SecretProblem(f"{named_by}: {path} does not exist; mount the secret or fix the path")
    except IsADirectoryError:
        return SecretProblem(f"{named_by}: {path} is a folder; point it at the file")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return SecretProblem(f"{named_by}: {path} cannot be read ({reason})")
    return text.removesuffix("\n").removesuffix("\r")


class SecretFilesSource(PydanticBaseSettingsSource):
    """A pydantic-settings source placed after the flags and before the environment: it
    fills only secrets that no flag gave (`current_state` holds what the flags gave), and a
    secret in both `OCR_<NAME>` and `OCR_<NAME>_FILE` becomes an error that wins over the
    variable; with only the variable it returns nothing and the environment source fills
    it. The folder is the last resort: a variable or a _FILE overrides its file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Not used: __call__ reads every secret at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = os.environ
        given = self.current_state
        folder = given.get(SECRETS_DIR_FIELD) or environ.get(variable(SECRETS_DIR_FIELD)) or None
        # A folder that is not there is reported by the field's own validator.
        folder_path = Path(os.path.expanduser(str(folder))) if folder else None
        if folder_path is not None and not folder_path.is_dir():
            folder_path = None
        found: dict[str, Any] = {}
        # Only the secrets of the parts composed here (a tool without Redis has no password
        # for it).
        for field in (name for name in SECRET_FIELDS if name in self.settings_cls.model_fields):
            name = variable(field)
            file_variable = name + FILE_SUFFIX
            file_value = environ.get(file_variable, "").strip()
            from_variable = bool(environ.get(name, "").strip())
            if given.get(field) is not None:
                continue  # a flag wins over everything, as for every setting
            if file_value and from_variable:
                found[field] = SecretProblem(
                    f"{name} and {file_variable} are both set; keep one (the file is safer)"
                )
                continue
            if from_variable:
                continue
            if file_value:
                found[field] = _read(Path(os.path.expanduser(file_value)), file_variable)
            elif folder_path is not None and (folder_path / name).is_file():
                found[field] = _read(folder_path / name, f"{variable(SECRETS_DIR_FIELD)}")
        return found


class RefuseSecretFlag(argparse.Action):
    """A secret given as a flag is refused at parse time (exit status 2, with usage)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
        values: str | Sequence[Any] | None, option_string: str | None = None,
    ) -> None:
        name = variable(self.dest.removeprefix("setting_"))
        parser.error(
            f"{option_string} is refused: a flag's value shows in `ps` to every user of this "
            f"host. Set {name}, or better {name}{FILE_SUFFIX} (a file holding it) or "
            f"{variable(SECRETS_DIR_FIELD)} (a folder of secret files named like the variables)"
        )
