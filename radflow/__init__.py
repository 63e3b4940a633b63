"""radflow: calibration of radio-telescope data at cluster scale.

MeasurementSets become partitioned xarray/zarr stores (MSv4 names); calibration steps are lazy
xarray transforms run by Dask.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("radflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from radflow.store import open  # noqa: E402,A004 - radflow.open is the public entry point

__all__ = ["__version__", "open"]
