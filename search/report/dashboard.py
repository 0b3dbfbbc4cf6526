"""`agesearch dashboard`: optuna-dashboard on a study's storage, on loopback unless asked.

optuna-dashboard already shows everything agesearch records (intermediate values per epoch,
user attrs with the val metrics, configs and histories), so this is only a launcher: it finds the
storage the same way `run` and `report` do, opens it read-safe (WAL, no heartbeat: serving a
study never fails a running trial) and hands it to `optuna_dashboard.run_server`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from agesearch.search.store import study as st

INSTALL_HINT = 'optuna-dashboard is not installed: pip install "agesearch[dashboard]" (or pip install optuna-dashboard)'


def resolve_storage(study: str | None, storage: str | None, studies_dir: Path = st.STUDIES_DIR) -> str:
    """The storage URL to serve: --storage, else the study's file, else the only studies/*.db.

    Raises:
        UsageError: no way to tell which file is meant (whether it exists is checked on opening).
    """
    if storage:
        url = storage
    elif study:
        url = st.default_storage(study, studies_dir)
    else:
        url = st.default_storage(st.only_study_file(studies_dir).stem, studies_dir)
    return url


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_address(host: str, port: int, study_id: int | None = None) -> str:
    """The URL the dashboard answers on (a study's page when its id is given)."""
    address = f"http://{host if ':' not in host else f'[{host}]'}:{port}/dashboard/"
    return address + (f"studies/{study_id}" if study_id is not None else "")


def open_dashboard_storage(study: str | None, storage: str | None):
    """(url, storage) to serve, read-safe; the study, when named, must be there.

    Raises:
        UsageError: no way to tell which file is meant.
        StorageError: no such database, or no such study in it.
    """
    url = resolve_storage(study, storage)
    opened = st.open_existing_storage(url, study)
    if study and not st.study_exists(opened, study):
        raise st.missing_study(opened, study, url)
    return url, opened
