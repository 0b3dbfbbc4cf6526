"""`agesearch dashboard`: optuna-dashboard on a study's storage, on loopback unless asked.

optuna-dashboard already shows everything agesearch records (intermediate values per epoch,
user attrs with the val metrics, configs and histories), so this is only a launcher: it finds the
storage the same way `run` and `report` do, opens it read-safe (WAL, no heartbeat: serving a
study never fails a running trial) and hands it to `optuna_dashboard.run_server`.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from agesearch.search import study as st
from agesearch.search.cli import UsageError

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
        found = sorted(studies_dir.glob("*.db"))
        if len(found) != 1:
            names = ", ".join(p.stem for p in found) or "none"
            raise UsageError(f"pass --study NAME or --storage URL (study files in {studies_dir}/: {names})")
        url = st.default_storage(found[0].stem, studies_dir)
    return url


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_dashboard(args) -> int:
    """Serve optuna-dashboard until interrupted."""
    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError(INSTALL_HINT) from None

    url = resolve_storage(args.study, args.storage)
    try:
        storage = st.open_existing_storage(url, args.study)
        if args.study and not st.study_exists(storage, args.study):
            raise st.missing_study(storage, args.study, url)
    except st.StorageError as e:
        raise UsageError(str(e)) from None
    address = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}/dashboard/"
    if args.study:
        address += f"studies/{storage.get_study_id_from_name(args.study)}"
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can read and edit the study", file=sys.stderr)
    print(f"optuna-dashboard for {url} at {address} (Ctrl-C stops it)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    except OSError as e:  # port taken, address not on this machine
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0
