"""Plots of calibration solutions (matplotlib, imported when a plot is made).

matplotlib is not a dependency of radflow: install it to use this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from radflow import schema


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("radflow.plots needs matplotlib (pip install matplotlib)") from exc
    return plt


def plot_switched_power(
    solution: xr.Dataset,
    *,
    antennas: Sequence[str] | None = None,
    receptors: Sequence[str] | None = None,
    fig: Any = None,
    title: str | None = None,
) -> Any:
    """Tsys, Pdiff and Psum against time from a switched-power solution.

    Parameters
    ----------
    solution : xr.Dataset
        A solution of :func:`radflow.cal.swpower.solve` (cal_type ``SWPOW``); computed if lazy.
    antennas, receptors : optional
        What to draw (default: all).
    fig : matplotlib Figure, optional
        Drawn into (three axes are added); a new figure otherwise.
    title : str, optional
        Figure title (default: the spw id and the scale).

    Returns
    -------
    matplotlib.figure.Figure
        Three panels sharing the time axis (minutes from the first sample): Tsys (K), Pdiff and
        Psum (correlator power units) per antenna and receptor; samples the editing replaced are
        marked with crosses (at their new values), flagged solutions left out.
    """
    if solution.attrs.get(schema.ATTR_CAL_TYPE) != schema.CAL_TYPE_SWPOW:
        raise ValueError(
            f"plot_switched_power: not a switched-power solution "
            f"(cal_type {solution.attrs.get(schema.ATTR_CAL_TYPE)!r})"
        )
    plt = _pyplot()
    sol = solution.compute()
    if antennas is not None:
        sol = sol.sel({schema.ANTENNA_NAME: list(antennas)})
    if receptors is not None:
        sol = sol.sel({schema.RECEPTOR: list(receptors)})
    dims = (schema.TIME, schema.ANTENNA_NAME, schema.RECEPTOR)
    times = sol[schema.TIME].values.astype(float)
    minutes = (times - times[0]) / 60.0
    flag = sol[schema.FLAG].isel({schema.FREQUENCY: 0}).transpose(*dims).values
    tsys = sol[schema.TSYS].isel({schema.FREQUENCY: 0}).transpose(*dims).values
    panels = [
        ("Tsys (K)", np.where(flag, np.nan, tsys), None),
        (
            "Pdiff",
            sol[schema.SWITCHED_DIFF].transpose(*dims).values,
            sol[schema.SWPOW_EDITED_DIFF].transpose(*dims).values,
        ),
        (
            "Psum",
            sol[schema.SWITCHED_SUM].transpose(*dims).values,
            sol[schema.SWPOW_EDITED_SUM].transpose(*dims).values,
        ),
    ]
    if fig is None:
        fig = plt.figure(figsize=(9, 8))
    axes = fig.subplots(3, 1, sharex=True)
    names = sol[schema.ANTENNA_NAME].values.astype(str)
    recs = sol[schema.RECEPTOR].values.astype(str)
    for ax, (label, values, edited) in zip(axes, panels, strict=True):
        for a, antenna in enumerate(names):
            for r, receptor in enumerate(recs):
                (line,) = ax.plot(minutes, values[:, a, r], ".-", ms=3, lw=0.8,
                                  label=f"{antenna} {receptor}")  # fmt: skip
                if edited is not None and edited[:, a, r].any():
                    k = edited[:, a, r]
                    ax.plot(minutes[k], values[k, a, r], "x", color=line.get_color(), ms=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (min from the first sample)")
    if len(names) * len(recs) <= 12:
        axes[0].legend(fontsize="small", ncol=4)
    spw = solution.attrs.get(schema.ATTR_SPW_ID)
    scale = solution.attrs.get(schema.SWPOW_ATTR_SCALE)
    fig.suptitle(title if title is not None else f"switched power, spw {spw} (scale {scale})")
    return fig


# ---- single dish and interferometer chains (the notebooks' plots) ----

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "v", "D", "P")


def _ghz(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=float) / 1e9


def _check_cal_type(solution: xr.Dataset, cal_types: Sequence[str], what: str) -> None:
    cal_type = solution.attrs.get(schema.ATTR_CAL_TYPE)
    if cal_type not in cal_types:
        raise ValueError(
            f"{what}: expected a solution of cal_type {' or '.join(cal_types)}, got {cal_type!r}"
        )


def _new_figure(fig: Any, size: tuple[float, float]) -> Any:
    return _pyplot().figure(figsize=size) if fig is None else fig


def _units_label(units: str) -> str:
    return {"": "raw counts", schema.UNITS_KELVIN: "Ta* (K)", schema.UNITS_JANSKY: "S (Jy)"}.get(
        units, units
    )


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) index ranges of the runs of True in a 1-d mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1, strict=True))


def _shade_channels(ax: Any, freq_ghz: np.ndarray, mask: np.ndarray, label: str) -> None:
    """Shade the channels where `mask` is True (one legend entry)."""
    width = abs(float(np.median(np.diff(freq_ghz)))) if freq_ghz.size > 1 else 0.0
    for k, (i, j) in enumerate(_runs(mask)):
        lo, hi = sorted((freq_ghz[i], freq_ghz[j]))
        ax.axvspan(
            lo - width / 2,
            hi + width / 2,
            color="tab:orange",
            alpha=0.25,
            lw=0,
            label=label if k == 0 else None,
        )


def plot_tsys(
    solution: xr.Dataset,
    *,
    antennas: Sequence[str] | None = None,
    fig: Any = None,
    title: str | None = None,
) -> Any:
    """Tsys spectra against frequency from a Tsys solution (:func:`radflow.cal.tsys.solve`).

    Parameters
    ----------
    solution : xr.Dataset
        cal_type ``TSYS``: ``CALIBRATION_PARAMETER`` (K) on (time, antenna_name, frequency,
        receptor), at the science channels.
    antennas : optional
        Antennas to draw (default: all).
    fig : matplotlib Figure, optional
        Drawn into (one axis per receptor); a new figure otherwise.
    title : str, optional
        Figure title (default: the science and Tsys spw ids).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per receptor: Tsys (K) against frequency (GHz), a colour per antenna and a
        line style per SYSCAL time (minutes from the first); flagged channels left out.
    """
    _check_cal_type(solution, (schema.CAL_TYPE_TSYS,), "plot_tsys")
    sol = solution.compute()
    if antennas is not None:
        sol = sol.sel({schema.ANTENNA_NAME: list(antennas)})
    dims = (schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.RECEPTOR)
    tsys = sol[schema.CALIBRATION_PARAMETER].transpose(*dims).values
    tsys = np.where(sol[schema.FLAG].transpose(*dims).values, np.nan, tsys)
    freq = _ghz(sol[schema.FREQUENCY].values)
    times = sol[schema.TIME].values.astype(float)
    minutes = (times - times[0]) / 60.0
    names = sol[schema.ANTENNA_NAME].values.astype(str)
    recs = sol[schema.RECEPTOR].values.astype(str)
    fig = _new_figure(fig, (5.0 * len(recs), 4.0))
    axes = np.atleast_1d(fig.subplots(1, len(recs), sharey=True, squeeze=False)[0])
    colors = _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    for r, (ax, receptor) in enumerate(zip(axes, recs, strict=True)):
        for a, antenna in enumerate(names):
            for t, minute in enumerate(minutes):
                ax.plot(
                    freq,
                    tsys[t, a, :, r],
                    color=colors[a % len(colors)],
                    ls=_LINESTYLES[t % len(_LINESTYLES)],
                    lw=1.0,
                    label=f"{antenna}, t = {minute:.1f} min",
                )
        ax.set_xlabel("frequency (GHz)")
        ax.set_title(f"receptor {receptor}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Tsys (K)")
    axes[-1].legend(fontsize="small")
    spw = solution.attrs.get(schema.ATTR_SPW_ID)
    tsys_spw = solution.attrs.get(schema.ATTR_TSYS_SPW_ID)
    fig.suptitle(
        title
        if title is not None
        else f"Tsys of science spw {spw} (from Tsys spw {tsys_spw}), interpolated onto its channels"
    )
    return fig


def _mean_spectrum(data: xr.DataArray, flag: xr.DataArray, antenna: str) -> Any:
    """Time-averaged (unflagged) spectrum of one antenna, (frequency, polarization); lazy
    (a dask array) when the data are."""
    sel = {schema.ANTENNA_NAME: antenna}
    good = ~flag.sel(sel)
    values = data.sel(sel).where(good).mean(schema.TIME)
    return values.transpose(schema.FREQUENCY, schema.POLARIZATION).data


def _compute(*arrays: Any) -> list[np.ndarray]:
    """Compute several (lazy or not) arrays in one graph."""
    import dask

    return [np.asarray(a) for a in dask.compute(*arrays)]


def plot_sky(
    on: xr.Dataset | Sequence[xr.Dataset],
    sky_solution: xr.Dataset,
    *,
    group: str = schema.GROUP_BASE,
    fig: Any = None,
    title: str | None = None,
) -> Any:
    """ON and OFF spectra of one antenna: the raw ON spectrum averaged in time and the OFF
    spectra of a sky solution (:func:`radflow.cal.sky.solve`), one per OFF block.

    Parameters
    ----------
    on : xr.Dataset or list of them
        ON-source spectrum partitions (data group `group`) of the solution's antenna and spw;
        computed here (their mean over time).
    sky_solution : xr.Dataset
        The OFF spectra of that antenna and spw (``CALIBRATION_PARAMETER``, data units).
    group : str
        The ON data group (the raw ``base`` group, which the OFF spectra come from).
    fig, title : optional
        Figure to draw into (one axis per polarization), and its title.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per polarization: intensity (the data's units) against frequency (GHz).
    """
    from radflow.step import get_data_group

    sol = sky_solution.compute()
    antenna = str(sol[schema.ANTENNA_NAME].values[0])
    partitions = [on] if isinstance(on, xr.Dataset) else list(on)
    groups = [get_data_group(ds, group) for ds in partitions]
    # the mean of the partitions' means (one per scan), computed in one graph
    on_mean = np.nanmean(_compute(*(_mean_spectrum(g.data, g.flag, antenna) for g in groups)), 0)
    units = groups[0].units
    freq = _ghz(partitions[0][schema.FREQUENCY].values)
    dims = (schema.TIME, schema.FREQUENCY, schema.POLARIZATION)
    off = sol[schema.CALIBRATION_PARAMETER].sel({schema.ANTENNA_NAME: antenna})
    off_flag = sol[schema.FLAG].sel({schema.ANTENNA_NAME: antenna}).transpose(*dims).values
    off = np.where(off_flag, np.nan, off.transpose(*dims).values)
    off_times = sol[schema.TIME].values.astype(float)
    t0 = min(float(ds[schema.TIME].values.min()) for ds in partitions)
    t0 = min(t0, float(off_times.min()))
    pols = partitions[0][schema.POLARIZATION].values.astype(str)
    fig = _new_figure(fig, (5.5 * len(pols), 4.0))
    axes = np.atleast_1d(fig.subplots(1, len(pols), sharey=True, squeeze=False)[0])
    cmap = _pyplot().get_cmap("viridis")
    for p, (ax, pol) in enumerate(zip(axes, pols, strict=True)):
        for k, t in enumerate(off_times):
            ax.plot(
                freq,
                off[k, :, p],
                lw=0.8,
                color=cmap(k / max(len(off_times) - 1, 1)),
                label=f"OFF, t = {(t - t0) / 60:.1f} min",
            )
        ax.plot(freq, on_mean[:, p], color="k", lw=1.2, label="ON, mean over time")
        ax.set_xlabel("frequency (GHz)")
        ax.set_title(f"{antenna} {pol}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{_units_label(units)} (data group {group!r})")
    axes[-1].legend(fontsize="small")
    spw = sol.attrs.get(schema.ATTR_SPW_ID, "")
    mode = sol.attrs.get(schema.ATTR_SKY_MODE, "")
    fig.suptitle(title if title is not None else f"ON and OFF spectra, spw {spw} (sky mode {mode})")
    return fig


def plot_baseline(
    ds: xr.Dataset,
    table: xr.Dataset,
    *,
    antenna: str | None = None,
    time: int | None = None,
    group: str | None = None,
    output: str = schema.GROUP_BASELINED,
    fig: Any = None,
    title: str | None = None,
) -> Any:
    """Baseline fits with their line masks (:func:`radflow.cal.baseline.subtract`).

    Parameters
    ----------
    ds : xr.Dataset
        A partition with the fitted data group (`group`, default: the table's ``data_group``)
        and the baselined group `output`; the fitted baseline is their difference.
    table : xr.Dataset
        The per-spectrum baseline table of that partition (``FIT_MASK``, ``RMS``).
    antenna : str, optional
        Default: the first antenna.
    time : int, optional
        Index of one integration; None (default): the mean over time of data and fits, with
        the channels excluded from at least half of the fits shaded.
    fig, title : optional
        Figure to draw into (2 x n_polarization axes), and its title.

    Returns
    -------
    matplotlib.figure.Figure
        Top row: the spectrum, its baseline fit, and the channels left out of the fit (lines,
        edges, flags) shaded; bottom row: the baselined spectrum. Against frequency (GHz), in
        the data's units.
    """
    from radflow.step import describe_partition, get_data_group

    group = group or str(table.attrs.get(schema.BL_ATTR_DATA_GROUP, schema.GROUP_CORRECTED))
    src, out = get_data_group(ds, group), get_data_group(ds, output)
    if antenna is None:
        antenna = str(ds[schema.ANTENNA_NAME].values[0])
    sel = {schema.ANTENNA_NAME: antenna}
    dims = (schema.TIME, schema.FREQUENCY, schema.POLARIZATION)
    data = src.data.sel(sel).transpose(*dims)
    result = out.data.sel(sel).transpose(*dims)
    flag = out.flag.sel(sel).transpose(*dims)
    mask = table[schema.BL_FIT_MASK].sel(sel).transpose(*dims)
    rms = table[schema.BL_RMS].sel(sel).transpose(schema.TIME, schema.POLARIZATION)
    if time is not None:
        pick = {schema.TIME: [time]}
        data, result, flag, mask, rms = (x.isel(pick) for x in (data, result, flag, mask, rms))
    data, result, flag, mask, rms = _compute(*(x.data for x in (data, result, flag, mask, rms)))
    good = ~flag
    spectrum = np.nanmean(np.where(good, data, np.nan), axis=0)
    baselined = np.nanmean(np.where(good, result, np.nan), axis=0)
    fit = np.nanmean(np.where(good, data - result, np.nan), axis=0)
    excluded = (~mask).mean(axis=0) >= 0.5
    freq = _ghz(ds[schema.FREQUENCY].values)
    pols = ds[schema.POLARIZATION].values.astype(str)
    fig = _new_figure(fig, (5.5 * len(pols), 6.0))
    axes = fig.subplots(2, len(pols), sharex=True, squeeze=False)
    what = "mean over time" if time is None else f"integration {time}"
    for p, pol in enumerate(pols):
        top, bottom = axes[0, p], axes[1, p]
        _shade_channels(top, freq, excluded[:, p], "not fitted (lines, edges, flags)")
        top.plot(freq, spectrum[:, p], color="k", lw=0.8, label=f"{group} ({what})")
        blfunc = table.attrs.get(schema.BL_ATTR_BLFUNC, "")
        order = table.attrs.get(schema.BL_ATTR_ORDER, "")
        top.plot(freq, fit[:, p], color="tab:red", lw=1.5, label=f"baseline ({blfunc} {order})")
        top.set_title(f"{antenna} {pol}")
        _shade_channels(bottom, freq, excluded[:, p], "not fitted")
        bottom.plot(
            freq,
            baselined[:, p],
            color="tab:blue",
            lw=0.8,
            label=f"{output}, rms {np.nanmean(rms[:, p]):.3g} {out.units}",
        )
        bottom.axhline(0.0, color="grey", lw=0.5)
        bottom.set_xlabel("frequency (GHz)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    axes[0, 0].set_ylabel(_units_label(src.units))
    axes[1, 0].set_ylabel(f"baselined {_units_label(out.units)}")
    fig.suptitle(title if title is not None else f"baseline fit: {describe_partition(ds)}")
    return fig


def plot_spectra(
    partitions: xr.Dataset | Sequence[xr.Dataset],
    groups: Sequence[str] = (schema.GROUP_BASELINED, schema.GROUP_JY),
    *,
    antennas: Sequence[str] | None = None,
    fig: Any = None,
    title: str | None = None,
) -> Any:
    """Calibrated spectra, averaged in time, one panel per data group (e.g. K and Jy).

    Parameters
    ----------
    partitions : xr.Dataset or list of them
        Spectrum partitions of one spw holding every group in `groups` (computed here: their
        mean over time; several partitions are averaged with equal weight).
    groups : sequence of str
        Data groups to draw, each in its own units (``baselined`` in K, ``jy`` in Jy).
    antennas : optional
        Default: all antennas of the partitions.
    fig, title : optional
        Figure to draw into (one axis per group), and its title.

    Returns
    -------
    matplotlib.figure.Figure
        Intensity (the group's units) against frequency (GHz), a line per antenna and
        polarization.
    """
    from radflow.step import get_data_group

    parts = [partitions] if isinstance(partitions, xr.Dataset) else list(partitions)
    if antennas is None:
        antennas = sorted({str(a) for ds in parts for a in ds[schema.ANTENNA_NAME].values})
    freq = _ghz(parts[0][schema.FREQUENCY].values)
    pols = parts[0][schema.POLARIZATION].values.astype(str)
    fig = _new_figure(fig, (5.5 * len(groups), 4.0))
    axes = np.atleast_1d(fig.subplots(1, len(groups), squeeze=False)[0])
    lazy, keys, units = [], [], {}
    for group in groups:
        for antenna in antennas:
            for ds in parts:
                if antenna in ds[schema.ANTENNA_NAME].values:
                    g = get_data_group(ds, group)
                    units[group] = g.units
                    lazy.append(_mean_spectrum(g.data, g.flag, antenna))
                    keys.append((group, antenna))
    means: dict[tuple[str, str], list[np.ndarray]] = {}
    for key, value in zip(keys, _compute(*lazy), strict=True):  # one graph for all
        means.setdefault(key, []).append(value)
    for ax, group in zip(axes, groups, strict=True):
        for antenna in antennas:
            if (group, antenna) not in means:
                continue
            mean = np.nanmean(means[(group, antenna)], axis=0)
            for p, pol in enumerate(pols):
                ax.plot(
                    freq,
                    mean[:, p],
                    lw=0.8,
                    ls=_LINESTYLES[p % len(_LINESTYLES)],
                    label=f"{antenna} {pol}",
                )
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlabel("frequency (GHz)")
        ax.set_ylabel(_units_label(units.get(group, "")))
        ax.set_title(f"data group {group!r} ({units.get(group) or 'raw'})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    info = parts[0].attrs.get(schema.ATTR_PARTITION_INFO) or {}
    default = f"calibrated spectra, spw {info.get(schema.PI_SPW_ID, '?')}, mean over time"
    fig.suptitle(title if title is not None else default)
    return fig


def _one_spw(table: Any, spw: int | None, what: str) -> xr.Dataset:
    if isinstance(table, xr.Dataset):
        return table
    if not table:
        raise ValueError(f"{what}: empty solution table")
    return table[min(table) if spw is None else spw]


def plot_gains(
    table: xr.Dataset | dict[int, xr.Dataset],
    *,
    spw: int | None = None,
    panels: Sequence[str] = ("amplitude", "phase"),
    antennas: Sequence[str] | None = None,
    fig: Any = None,
    title: str | None = None,
) -> Any:
    """Complex gains against time (:func:`radflow.cal.gain.solve`, G or T).

    Parameters
    ----------
    table : xr.Dataset or dict of spw id -> Dataset
        A gain solution, or a solution table (one spw is drawn: `spw`, default the first).
    panels : sequence of "amplitude", "phase"
        What to draw, top to bottom (a phase-only solution has amplitude 1).
    antennas : optional
        Default: all.
    fig, title : optional
        Figure to draw into, and its title.

    Returns
    -------
    matplotlib.figure.Figure
        Amplitude (dimensionless) and phase (deg, relative to the reference antenna) against
        time (minutes from the first solution), a colour per antenna and a marker per
        receptor; the field of each solution is written along the top; flagged solutions are
        left out.
    """
    sol = _one_spw(table, spw, "plot_gains")
    _check_cal_type(sol, schema.CAL_TYPES_GAIN, "plot_gains")
    sol = sol.compute()
    if antennas is not None:
        sol = sol.sel({schema.ANTENNA_NAME: list(antennas)})
    dims = (schema.TIME, schema.ANTENNA_NAME, schema.RECEPTOR)
    gains = sol[schema.CALIBRATION_PARAMETER].isel({schema.FREQUENCY: 0}).transpose(*dims).values
    flag = sol[schema.FLAG].isel({schema.FREQUENCY: 0}).transpose(*dims).values
    gains = np.where(flag, np.nan, gains)
    times = sol[schema.TIME].values.astype(float)
    minutes = (times - times[0]) / 60.0
    names = sol[schema.ANTENNA_NAME].values.astype(str)
    recs = sol[schema.RECEPTOR].values.astype(str)
    values = {"amplitude": np.abs(gains), "phase": np.degrees(np.angle(gains))}
    labels = {"amplitude": "gain amplitude", "phase": "gain phase (deg)"}
    unknown = [p for p in panels if p not in values]
    if unknown:
        raise ValueError(f"plot_gains: panels must be 'amplitude' or 'phase', not {unknown}")
    fig = _new_figure(fig, (10.0, 2.8 * len(panels) + 0.8))
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
    colors = _pyplot().get_cmap("tab20")
    for ax, panel in zip(axes, panels, strict=True):
        for a, antenna in enumerate(names):
            for r, receptor in enumerate(recs):
                ax.plot(
                    minutes,
                    values[panel][:, a, r],
                    lw=0.6,
                    ms=3,
                    marker=_MARKERS[r % len(_MARKERS)],
                    color=colors(a % 20),
                    label=f"{antenna} {receptor}",
                )
        ax.set_ylabel(labels[panel])
        ax.grid(alpha=0.3)
    if "phase" in panels:
        axes[list(panels).index("phase")].set_ylim(-185, 185)
    axes[-1].set_xlabel("time (min from the first solution)")
    fields = sol[schema.FIELD_NAME].values.astype(str) if schema.FIELD_NAME in sol.coords else []
    for k, name in enumerate(fields):
        if k == 0 or name != fields[k - 1]:
            axes[0].annotate(
                name,
                (minutes[k], 1.0),
                xycoords=("data", "axes fraction"),
                fontsize="x-small",
                rotation=30,
                va="bottom",
            )
    axes[-1].legend(
        fontsize="x-small",
        ncol=max(1, len(names) * len(recs) // 8),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0 * len(panels)),
    )
    cal_type = sol.attrs.get(schema.ATTR_CAL_TYPE)
    spw_id = sol.attrs.get(schema.ATTR_SPW_ID)
    mode = sol.attrs.get(schema.ATTR_CALMODE, "")
    solint = sol.attrs.get(schema.ATTR_SOLINT, "")
    default = f"{cal_type} gains, spw {spw_id} (calmode {mode}, solint {solint})"
    fig.suptitle(title if title is not None else default, y=1.02)
    return fig


def plot_bandpass(
    table: xr.Dataset | dict[int, xr.Dataset],
    *,
    antennas: Sequence[str] | None = None,
    fig: Any = None,
    title: str | None = None,
) -> Any:
    """Bandpass amplitude and phase against frequency (:func:`radflow.cal.bandpass.solve`).

    Parameters
    ----------
    table : xr.Dataset or dict of spw id -> Dataset
        B solutions; every spw gets a column. With several solution times the first is drawn.
    antennas : optional
        Default: all.
    fig, title : optional
        Figure to draw into (2 x n_spw axes), and its title.

    Returns
    -------
    matplotlib.figure.Figure
        Top: amplitude (dimensionless); bottom: phase (deg, relative to the reference
        antenna); against frequency (GHz), a colour per antenna and a line style per
        receptor; flagged channels left out.
    """
    tables = {0: table} if isinstance(table, xr.Dataset) else dict(sorted(table.items()))
    fig = _new_figure(fig, (4.5 * len(tables) + 1.5, 6.0))
    axes = fig.subplots(2, len(tables), sharey="row", squeeze=False)
    colors = _pyplot().get_cmap("tab20")
    dims = (schema.FREQUENCY, schema.ANTENNA_NAME, schema.RECEPTOR)
    for col, sol in enumerate(tables.values()):
        _check_cal_type(sol, (schema.CAL_TYPE_B,), "plot_bandpass")
        sol = sol.isel({schema.TIME: 0}).compute()
        if antennas is not None:
            sol = sol.sel({schema.ANTENNA_NAME: list(antennas)})
        gains = sol[schema.CALIBRATION_PARAMETER].transpose(*dims).values
        gains = np.where(sol[schema.FLAG].transpose(*dims).values, np.nan, gains)
        freq = _ghz(sol[schema.FREQUENCY].values)
        names = sol[schema.ANTENNA_NAME].values.astype(str)
        recs = sol[schema.RECEPTOR].values.astype(str)
        for a, antenna in enumerate(names):
            for r, receptor in enumerate(recs):
                style = dict(color=colors(a % 20), ls=_LINESTYLES[r % len(_LINESTYLES)], lw=0.9)
                axes[0, col].plot(
                    freq, np.abs(gains[:, a, r]), label=f"{antenna} {receptor}", **style
                )
                axes[1, col].plot(freq, np.degrees(np.angle(gains[:, a, r])), **style)
        axes[0, col].set_title(f"spw {sol.attrs.get(schema.ATTR_SPW_ID)}")
        axes[1, col].set_xlabel("frequency (GHz)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("bandpass amplitude")
    axes[1, 0].set_ylabel("bandpass phase (deg)")
    axes[0, -1].legend(
        fontsize="x-small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        ncol=max(1, sum(1 for _ in axes[0, -1].lines) // 12),
    )
    fig.suptitle(title if title is not None else "bandpass (B) solutions")
    return fig


def plot_fluxscale(
    view: xr.Dataset,
    *,
    expected: dict[str, tuple[Any, Any]] | None = None,
    fig: Any = None,
    title: str | None = None,
) -> Any:
    """The transfer calibrators' flux densities per spw with their errors, and the spectral fit
    (:func:`radflow.cal.fluxscale.fluxscale`).

    Parameters
    ----------
    view : xr.Dataset
        A fluxscale result view (computed here if lazy).
    expected : dict of field name -> (frequencies in Hz, flux densities in Jy), optional
        Drawn as dashed lines (e.g. the simulator's injected spectra).
    fig, title : optional
        Figure to draw into (one axis per transfer field), and its title.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per transfer field: flux density (Jy) against frequency (GHz), the per-spw
        flux densities with 1-sigma error bars (``FLUX_DENSITY_ERROR``) and the fitted
        spectrum ``log10 S = sum_k a_k (log10 nu - log10 nu_ref)^k``.
    """
    if view.attrs.get(schema.ATTR_TYPE) != schema.TYPE_FLUXSCALE_RESULT:
        raise ValueError("plot_fluxscale: not a fluxscale result view")
    v = view.compute()
    freq = v[schema.FREQUENCY].values.astype(float)
    good_freq = freq[np.isfinite(freq)]
    span = good_freq.max() - good_freq.min()
    grid = np.linspace(good_freq.min() - 0.05 * span, good_freq.max() + 0.05 * span, 200)
    transfer = [
        (f, str(name))
        for f, name in enumerate(v[schema.FIELD_NAME].values)
        if v[schema.FS_ROLE].values[f] == schema.FS_ROLE_TRANSFER
    ]
    if not transfer:
        raise ValueError("plot_fluxscale: the view has no transfer field")
    fig = _new_figure(fig, (5.0 * len(transfer), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(transfer), squeeze=False)[0])
    for ax, (f, name) in zip(axes, transfer, strict=True):
        flux = v[schema.FS_FLUX_DENSITY].values[f]
        err = v[schema.FS_FLUX_DENSITY_ERROR].values[f]
        ok = np.isfinite(flux) & np.isfinite(freq)
        ax.errorbar(
            _ghz(freq[ok]),
            flux[ok],
            yerr=np.nan_to_num(err[ok]),
            fmt="o",
            ms=4,
            capsize=4,
            color="tab:blue",
            label="fluxscale per spw (1 sigma)",
        )
        order = int(v[schema.FS_FIT_ORDER].values[f])
        if order >= 0:
            coef = v[schema.FS_FIT_COEFFICIENTS].values[f, : order + 1]
            ref = float(v[schema.FS_FIT_REFERENCE_FREQUENCY].values[f])
            fit = 10 ** np.polynomial.polynomial.polyval(np.log10(grid / ref), coef)
            fit_flux = float(v[schema.FS_FIT_FLUX_DENSITY].values[f])
            fit_err = float(v[schema.FS_FIT_FLUX_DENSITY_ERROR].values[f])
            index = ""
            if order >= 1:
                index_err = float(v[schema.FS_FIT_COEFFICIENT_ERRORS].values[f, 1])
                index = f"\nspectral index {coef[1]:+.3f} +- {index_err:.3f}"
            ax.plot(
                _ghz(grid),
                fit,
                color="tab:red",
                lw=1.2,
                label=f"fit: {fit_flux:.4f} +- {fit_err:.4f} Jy at {ref / 1e9:.2f} GHz{index}",
            )
        if expected and name in expected:
            e_freq, e_flux = (np.asarray(x, dtype=float) for x in expected[name])
            order_idx = np.argsort(e_freq)
            ax.plot(
                _ghz(e_freq[order_idx]),
                e_flux[order_idx],
                color="k",
                ls="--",
                lw=1.0,
                label="expected",
            )
        ax.set_xlabel("frequency (GHz)")
        ax.set_ylabel("flux density (Jy)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    refs = ", ".join(view.attrs.get(schema.FS_ATTR_REFERENCE_FIELDS, []))
    fig.suptitle(title if title is not None else f"fluxscale (flux reference: {refs})")
    return fig
