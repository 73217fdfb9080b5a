"""tpemu: a Teleport networking emulator.

The root package holds what every service shares: pure wire codecs (:mod:`tpemu.wire`), the
asyncio kit (:mod:`tpemu.net`), configuration (:mod:`tpemu.config`), logging and the CLI. The
services install beside it as :mod:`tpemu.proxy`, :mod:`tpemu.auth` and :mod:`tpemu.agent`.
"""

__version__ = "0.1.0"

#: The Teleport version tpemu reports in ``/webapi/ping`` (``server_version``) and the oldest
#: client it accepts (``min_client_version``): Teleport supports clients one major version behind,
#: written as Teleport's ``version.go`` ``MinClientSemVersion`` does (``{Major: 16, PreRelease:
#: "aa"}`` → ``16.0.0-aa``, so 16's pre-releases pass too; see :mod:`tpemu.versioncheck`).
TELEPORT_VERSION = "17.0.0"
MIN_CLIENT_VERSION = "16.0.0-aa"


def _map_service_folders_in_checkout() -> None:
    # The service folders (proxy/, agent/, auth/) sit beside this package in the repository and
    # become tpemu.proxy … through setuptools' package-dir mapping when installed. When this
    # package is imported straight from a checkout instead (the repository root first on
    # sys.path, as with `python -m pytest` or `python -c` run there), let those subpackages
    # resolve to the same folders rather than fail to import.
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if not os.path.isdir(os.path.join(here, "proxy")) and os.path.isfile(os.path.join(root, "pyproject.toml")) \
            and os.path.isfile(os.path.join(root, "proxy", "__init__.py")):
        __path__.append(root)


_map_service_folders_in_checkout()


def __getattr__(name: str) -> object:
    # ``tpemu.Cluster`` / ``tpemu.SyncCluster`` / the error roots without importing every service on ``import tpemu``.
    if name in ("Cluster", "SyncCluster"):
        from tpemu import testkit

        return getattr(testkit, name)
    if name in ("TpemuError", "PeerFault", "LocalFault"):  # the error model (tpemu.errors)
        from tpemu import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'tpemu' has no attribute {name!r}")
