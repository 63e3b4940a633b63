"""Every dimension, variable, attribute and group name radflow writes or reads.

Names follow MSv4 as written by casangi's xradio (``schema_version`` below), so that xradio and
xarray-ms users can open radflow stores. Anything radflow adds beyond MSv4 is marked as such.
"""

from __future__ import annotations

SCHEMA_VERSION = "4.0.1"
CREATOR = "radflow"

# Offset between the MS epoch (MJD 0, seconds) and the unix epoch, in seconds.
MJD_UNIX_OFFSET_S = 3506716800.0

# ---- dataset types (attrs["type"]) ----
TYPE_PROCESSING_SET = "processing_set"
TYPE_VISIBILITY = "visibility"
TYPE_SPECTRUM = "spectrum"
TYPE_ANTENNA = "antenna"
TYPE_FIELD_AND_SOURCE = "field_and_source"
TYPE_SYSTEM_CALIBRATION = "system_calibration"
TYPE_POINTING = "pointing"
TYPE_WEATHER = "weather"
TYPE_QUANTA = "quanta"  # a variable holding a quantity with units (MSv4 measures)
# radflow's own datasets are MSv4 "extension" types, which xradio skips.
TYPE_SWITCHED_POWER = "extension:switched_power.radflow"
TYPE_CAL_DEVICE = "extension:cal_device.radflow"
TYPE_CALIBRATION_SOLUTION = "extension:calibration_solution.radflow"

# ---- dimensions ----
TIME = "time"
BASELINE_ID = "baseline_id"
ANTENNA_NAME = "antenna_name"
FREQUENCY = "frequency"
POLARIZATION = "polarization"
UVW_LABEL = "uvw_label"
RECEPTOR_LABEL = "receptor_label"
CARTESIAN_POS_LABEL = "cartesian_pos_label"
SKY_DIR_LABEL = "sky_dir_label"
LOCAL_SKY_DIR_LABEL = "local_sky_dir_label"
FIELD_NAME = "field_name"
LINE_LABEL = "line_label"
TIME_SYSTEM_CAL = "time_system_cal"
FREQUENCY_SYSTEM_CAL = "frequency_system_cal"
TIME_POINTING = "time_pointing"
TIME_WEATHER = "time_weather"
STATION_NAME = "station_name"
TIME_SWITCHED_POWER = "time_switched_power"  # radflow extension
TIME_CAL_DEVICE = "time_cal_device"  # radflow extension
CAL_LOAD = "cal_load"  # radflow extension
# radflow extension: dims of per-antenna factor tables (scale, Jy/K); receptor values X, Y, R, L
RECEPTOR = "receptor"
SPECTRAL_WINDOW_NAME = "spectral_window_name"

# ---- coordinates ----
BASELINE_ANTENNA1_NAME = "baseline_antenna1_name"
BASELINE_ANTENNA2_NAME = "baseline_antenna2_name"
SCAN_NAME = "scan_name"
SOURCE_NAME = "source_name"
MOUNT = "mount"
TELESCOPE_NAME = "telescope_name"
POLARIZATION_TYPE = "polarization_type"

# ---- main data variables ----
VISIBILITY = "VISIBILITY"
SPECTRUM = "SPECTRUM"
FLAG = "FLAG"
WEIGHT = "WEIGHT"
UVW = "UVW"
EFFECTIVE_INTEGRATION_TIME = "EFFECTIVE_INTEGRATION_TIME"
TIME_CENTROID = "TIME_CENTROID"
# radflow extension: the MS row each (time, baseline/antenna) sample came from (-1: padding).
# Write-back uses it to put every sample back at exactly its original row.
MSV2_ROW = "MSV2_ROW"
# radflow extension: per integration, samples that were NaN/inf in the MS (kept, and flagged).
NONFINITE_FLAGGED = "NONFINITE_FLAGGED"

# ---- sub-dataset (child group) names ----
ANTENNA_XDS = "antenna_xds"
FIELD_AND_SOURCE_XDS = "field_and_source_xds"
SYSTEM_CALIBRATION_XDS = "system_calibration_xds"
POINTING_XDS = "pointing_xds"
WEATHER_XDS = "weather_xds"
SWITCHED_POWER_XDS = "switched_power_xds"
CAL_DEVICE_XDS = "cal_device_xds"

# ---- sub-dataset variables ----
ANTENNA_POSITION = "ANTENNA_POSITION"
ANTENNA_DISH_DIAMETER = "ANTENNA_DISH_DIAMETER"
ANTENNA_RECEPTOR_ANGLE = "ANTENNA_RECEPTOR_ANGLE"
FIELD_PHASE_CENTER_DIRECTION = "FIELD_PHASE_CENTER_DIRECTION"
FIELD_REFERENCE_CENTER_DIRECTION = "FIELD_REFERENCE_CENTER_DIRECTION"
SOURCE_DIRECTION = "SOURCE_DIRECTION"
TSYS = "TSYS"
SYSCAL_INTERVAL = "SYSCAL_INTERVAL"  # radflow extension: SYSCAL INTERVAL (s)
TCAL = "TCAL"
TRX = "TRX"
TSKY = "TSKY"
TANT = "TANT"
POINTING_BEAM = "POINTING_BEAM"
POINTING_DISH_MEASURED = "POINTING_DISH_MEASURED"  # radflow extension (POINTING.ENCODER)
TEMPERATURE = "TEMPERATURE"
PRESSURE = "PRESSURE"
REL_HUMIDITY = "REL_HUMIDITY"
WIND_SPEED = "WIND_SPEED"
WIND_DIRECTION = "WIND_DIRECTION"
DEW_POINT = "DEW_POINT"
SWITCHED_DIFF = "SWITCHED_DIFF"  # Pdiff, radflow extension
SWITCHED_SUM = "SWITCHED_SUM"  # Psum, radflow extension
REQUANTIZER_GAIN = "REQUANTIZER_GAIN"  # radflow extension
NOISE_CAL = "NOISE_CAL"  # CALDEVICE noise-diode temperature, radflow extension
CAL_EFF = "CAL_EFF"  # radflow extension
TEMPERATURE_LOAD = "TEMPERATURE_LOAD"  # radflow extension

# ---- attributes ----
ATTR_TYPE = "type"
ATTR_UNITS = "units"
ATTR_FRAME = "frame"
ATTR_OBSERVER = "observer"
ATTR_DATA_GROUPS = "data_groups"
ATTR_PARTITION_INFO = "partition_info"
ATTR_OBSERVATION_INFO = "observation_info"
ATTR_PROCESSOR_INFO = "processor_info"
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_CREATOR = "creator"
ATTR_CREATION_DATE = "creation_date"
ATTR_SPECTRAL_WINDOW_NAME = "spectral_window_name"
ATTR_SPECTRAL_WINDOW_INTENTS = "spectral_window_intents"
ATTR_REFERENCE_FREQUENCY = "reference_frequency"
ATTR_CHANNEL_WIDTH = "channel_width"
ATTR_INTEGRATION_TIME = "integration_time"
ATTR_SCAN_INTENTS = "scan_intents"
# radflow extensions on the store root and partitions
ATTR_SOURCE_MS = "radflow_source_ms"  # {"path", "nrows", "columns"}: what write-back checks
ATTR_RADFLOW_VERSION = "radflow_version"
ATTR_NAN_COUNT = "radflow_nonfinite_flagged"  # samples that were NaN/inf in the MS, now flagged

# ---- calibration solutions (radflow; DESIGN.md "Data model") ----
# attrs["type"] stays the dataset type TYPE_CALIBRATION_SOLUTION (an MSv4 extension type that
# xradio skips); the calibration type (G, T, B, TSYS, SKY, ...) is attrs["cal_type"].
ATTR_CAL_TYPE = "cal_type"
CAL_TYPE_TSYS = "TSYS"
CAL_TYPE_SKY = "SKY"
CALIBRATION_PARAMETER = "CALIBRATION_PARAMETER"
PARAMETER_ERROR = "PARAMETER_ERROR"
SNR = "SNR"
EXPOSURE = "EXPOSURE"  # total integration time behind a solution sample (s)
ATTR_SPW_ID = "spectral_window_id"
ATTR_TSYS_SPW_ID = "tsys_spectral_window_id"
ATTR_SKY_MODE = "sky_mode"
ATTR_ANTENNA_NAME = "antenna_name"
# Interferometer solution tables (gaincal, bandpass, fluxscale; radflow.cal.gain & co). One
# solution Dataset per spectral window, dims (time, antenna_name, frequency, receptor):
# frequency has one entry (the spw's centre, Hz) for G/T and one per channel for B; receptor is
# the feed letters (X, Y or R, L) for G/B and one entry, the letters joined ("XY", "RL"), for T
# (one gain shared by both hands). A multi-spw table is a Mapping[int, Dataset] (spw id -> one).
CAL_TYPE_G = "G"
CAL_TYPE_T = "T"
CAL_TYPE_B = "B"
CAL_TYPE_BPOLY = "BPOLY"
CAL_TYPES_GAIN = (CAL_TYPE_G, CAL_TYPE_T)
REFERENCE_ANTENNA = "REFERENCE_ANTENNA"  # var (time,): the refant name of each solution ("": none)
SOLUTION_INTERVAL = "SOLUTION_INTERVAL"  # var (time,): the interval a solution spans (s)
N_VISIBILITIES = "N_VISIBILITIES"  # var (time, antenna_name, frequency, receptor): data used
SCAN_NUMBER = "scan_number"  # coordinate (time,) of solutions: the (first) scan solved
ATTR_SOLINT = "solint"
ATTR_COMBINE = "combine"
ATTR_CALMODE = "calmode"
ATTR_REFANT = "refant"  # the user's refant list, comma separated
ATTR_MS_NAME = "ms_name"  # the source MS path (CASA caltable keyword MSName)
ATTR_POL_BASIS = "polarization_basis"  # "linear" or "circular" (CASA keyword PolBasis)
ATTR_FIELDS = "fields"  # field names the solutions came from
# dimensionless ratio, e.g. (ON - OFF)/OFF before the Tsys scaling; "" means raw counts
UNITS_RATIO = "1"

# ---- data groups ----
GROUP_BASE = "base"
GROUP_CORRECTED = "corrected"
GROUP_MODEL = "model"
GROUP_SCALED = "scaled"  # radflow: default output of the scale step
GROUP_BASELINED = "baselined"  # radflow: spectra after baseline subtraction (K)
GROUP_JY = "jy"  # radflow: single-dish spectra in Jy
# data-group roles (keys inside one data group)
ROLE_DATA = "correlated_data"
ROLE_FLAG = "flag"
ROLE_WEIGHT = "weight"
ROLE_UVW = "uvw"
ROLE_FIELD_AND_SOURCE = "field_and_source"
ROLE_DESCRIPTION = "description"
ROLE_DATE = "date"
ROLE_UNITS = "units"  # radflow: the physical units of the group's data ("" raw, "K", "Jy")

# ---- units ----
UNITS_RAW = ""
UNITS_KELVIN = "K"
UNITS_JANSKY = "Jy"

# ---- partition_info keys ----
PI_SPW_ID = "spectral_window_id"
PI_SPW_NAME = "spectral_window_name"
PI_SCAN = "scan_number"
PI_INTENTS = "scan_intents"
PI_FIELD = "field_name"
PI_SOURCE = "source_name"
PI_ANTENNA = "antenna_name"
PI_BASEBAND = "baseband_number"
PI_POLARIZATION = "polarization_setup"
PI_TIME_RANGE = "time_range"  # [first, last] unix seconds
PI_SHAPE = "shape"
PI_DATA_KIND = "data_kind"  # "visibility" or "spectrum"

# ---- MSv2 names (only converters/ uses these) ----
MS_DATA = "DATA"
MS_FLOAT_DATA = "FLOAT_DATA"
MS_CORRECTED_DATA = "CORRECTED_DATA"
MS_MODEL_DATA = "MODEL_DATA"
MS_FLAG = "FLAG"
MS_FLAG_ROW = "FLAG_ROW"
MS_WEIGHT = "WEIGHT"
MS_WEIGHT_SPECTRUM = "WEIGHT_SPECTRUM"
MS_SIGMA = "SIGMA"
MS_INDEX_COLUMNS = (
    "TIME",
    "ANTENNA1",
    "ANTENNA2",
    "DATA_DESC_ID",
    "SCAN_NUMBER",
    "STATE_ID",
    "FIELD_ID",
)
MS_REQUIRED_SUBTABLES = (
    "ANTENNA",
    "DATA_DESCRIPTION",
    "FIELD",
    "POLARIZATION",
    "SPECTRAL_WINDOW",
)

# MS data column -> (store data group, variable suffix)
MS_DATA_COLUMN_GROUPS = {
    MS_DATA: GROUP_BASE,
    MS_FLOAT_DATA: GROUP_BASE,
    MS_CORRECTED_DATA: GROUP_CORRECTED,
    MS_MODEL_DATA: GROUP_MODEL,
}

# Stokes/correlation type codes of casacore's Stokes enum (MS POLARIZATION.CORR_TYPE).
STOKES_TYPES = {
    1: "I", 2: "Q", 3: "U", 4: "V",
    5: "RR", 6: "RL", 7: "LR", 8: "LL",
    9: "XX", 10: "XY", 11: "YX", 12: "YY",
    13: "RX", 14: "RY", 15: "LX", 16: "LY",
    17: "XR", 18: "XL", 19: "YR", 20: "YL",
    21: "PP", 22: "PQ", 23: "QP", 24: "QQ",
}  # fmt: skip
STOKES_CODES = {name: code for code, name in STOKES_TYPES.items()}

# MS frequency reference codes (SPECTRAL_WINDOW.MEAS_FREQ_REF).
FREQ_FRAMES = {
    0: "REST", 1: "LSRK", 2: "LSRD", 3: "BARY", 4: "GEO", 5: "TOPO",
    6: "GALACTO", 7: "LGROUP", 8: "CMB", 64: "Undefined",
}  # fmt: skip
FREQ_FRAME_CODES = {name: code for code, name in FREQ_FRAMES.items()}

# Scan intents radflow's single-dish steps look for (STATE.OBS_MODE tokens).
INTENT_ON_SOURCE = "OBSERVE_TARGET#ON_SOURCE"
INTENT_OFF_SOURCE = "OBSERVE_TARGET#OFF_SOURCE"
INTENT_ATMOSPHERE = "CALIBRATE_ATMOSPHERE#ON_SOURCE"
INTENT_UNSPECIFIED = "UNSPECIFIED"


def data_var_name(base: str, group: str) -> str:
    """Variable name of `base` (VISIBILITY, SPECTRUM, FLAG, WEIGHT) in data group `group`.

    The base group keeps the plain MSv4 names; any other group appends its name in capitals,
    e.g. ``VISIBILITY_CORRECTED``, ``FLAG_CORRECTED``.
    """
    return base if group == GROUP_BASE else f"{base}_{group.upper()}"


# ---- baseline (radflow: the single-dish spectral baseline step, radflow.cal.baseline) ----
# (its default output group is GROUP_BASELINED, under "data groups" above)
TYPE_BASELINE_TABLE = "extension:baseline_table.radflow"  # per-spectrum baseline fit results
COEFFICIENT = "coefficient"  # dim of the per-spectrum coefficient vector (strings coordinate)
BL_COEFFICIENTS = "COEFFICIENTS"  # (time, antenna_name, polarization, coefficient), NaN-padded
BL_RMS = "RMS"  # (time, antenna_name, polarization), data units
BL_N_CLIPPED = "N_CLIPPED"  # (time, antenna_name, polarization), int
BL_FIT_MASK = "FIT_MASK"  # (time, antenna_name, frequency, polarization), bool, True = fitted
BL_ATTR_BLFUNC = "blfunc"
BL_ATTR_ORDER = "order"
BL_ATTR_NPIECE = "npiece"
BL_ATTR_ADDWN = "addwn"
BL_ATTR_REJWN = "rejwn"
BL_ATTR_APPLYFFT = "applyfft"
BL_ATTR_FFTTHRESH = "fftthresh"
BL_ATTR_CLIPTHRESH = "clipthresh"
BL_ATTR_CLIPNITER = "clipniter"
BL_ATTR_MASKMODE = "maskmode"
BL_ATTR_LINEFREE = "linefree"
BL_ATTR_THRESH = "thresh"
BL_ATTR_AVG_LIMIT = "avg_limit"
BL_ATTR_MINWIDTH = "minwidth"
BL_ATTR_EDGE = "edge"
BL_ATTR_DATA_GROUP = "data_group"  # the data group that was fitted
BL_POLY = "poly"
BL_CHEBYSHEV = "chebyshev"
BL_CSPLINE = "cspline"
BL_SINUSOID = "sinusoid"
BL_FUNCTIONS = (BL_POLY, BL_CHEBYSHEV, BL_CSPLINE, BL_SINUSOID)
BL_MASKMODE_LIST = "list"
BL_MASKMODE_AUTO = "auto"


# ---- CASA caltables (converters/caltable.py) ----
# Solution datasets <-> CASA NewCalTable caltables (the layout CASA 6 gaincal/bandpass/gencal
# write). Main-table columns, one row per (spw, solution time, antenna):
CT_TIME = "TIME"  # MJD seconds (UTC), QuantumUnits s, MEASINFO epoch UTC
CT_FIELD_ID = "FIELD_ID"  # -1: no field
CT_SPECTRAL_WINDOW_ID = "SPECTRAL_WINDOW_ID"
CT_ANTENNA1 = "ANTENNA1"
CT_ANTENNA2 = "ANTENNA2"  # the reference antenna, -1: none
CT_INTERVAL = "INTERVAL"  # s (CASA's solvers write 0)
CT_SCAN_NUMBER = "SCAN_NUMBER"  # -1: none
CT_OBSERVATION_ID = "OBSERVATION_ID"
CT_CPARAM = "CPARAM"  # complex parameters, cells [npar, nchan] (numpy (nchan, npar))
CT_FPARAM = "FPARAM"  # float parameters (Tsys, delays)
CT_PARAMERR = "PARAMERR"
CT_FLAG = "FLAG"
CT_SNR = "SNR"
CT_WEIGHT = "WEIGHT"  # CASA leaves its cells undefined
CT_MAIN_COLUMNS = (
    CT_TIME, CT_FIELD_ID, CT_SPECTRAL_WINDOW_ID, CT_ANTENNA1, CT_ANTENNA2, CT_INTERVAL,
    CT_SCAN_NUMBER, CT_OBSERVATION_ID,
)  # fmt: skip
# main-table keywords and their values
CT_KW_PAR_TYPE = "ParType"
CT_KW_MS_NAME = "MSName"  # the basename of the source MS
CT_KW_VIS_CAL = "VisCal"
CT_KW_POL_BASIS = "PolBasis"
CT_KW_CASA_VERSION = "CASA_Version"  # radflow writes "radflow <version>" here
CT_PAR_TYPE_COMPLEX = "Complex"
CT_PAR_TYPE_FLOAT = "Float"
CT_POL_BASIS = {"linear": "LINEAR", "circular": "CIRCULAR"}  # ATTR_POL_BASIS -> PolBasis
CT_POL_BASIS_UNKNOWN = "unknown"
CT_TABLE_INFO_TYPE = "Calibration"  # table.info type; its subType is the VisCal
CT_SUBTABLES = ("OBSERVATION", "ANTENNA", "FIELD", "SPECTRAL_WINDOW", "HISTORY")
CT_DM_GROUP = "MSMTAB"  # the one StandardStMan group CASA stores every column in
CAL_TYPE_K = "K"  # antenna delays (ns), CASA gaincal gaintype='K'
UNITS_NANOSECOND = "ns"
# cal_type -> VisCal. BPOLY solutions sampled on the spw's channels export as 'B Jones'.
CT_VIS_CAL = {
    CAL_TYPE_G: "G Jones",
    CAL_TYPE_T: "T Jones",
    CAL_TYPE_B: "B Jones",
    CAL_TYPE_BPOLY: "B Jones",
    CAL_TYPE_TSYS: "B TSYS",
    CAL_TYPE_K: "K Jones",
}


# ---- fluxscale (radflow.cal.fluxscale, radflow.cal.gfluxscale) ----
# The result view of radflow.cal.fluxscale.fluxscale: dims (field_name, spectral_window_id, ...)
# reusing FIELD_NAME, ANTENNA_NAME, RECEPTOR; FREQUENCY (Hz) and SPECTRAL_WINDOW_NAME are
# coordinates along SPECTRAL_WINDOW_ID there.
TYPE_FLUXSCALE_RESULT = "extension:fluxscale_result.radflow"
SPECTRAL_WINDOW_ID = "spectral_window_id"  # dim: spw ids (the MS DATA_DESC spw ids)
FIELD_ID = "field_id"  # coordinate along field_name: the MS FIELD id (CASA's dict keys)
FS_ROLE = "fluxscale_role"  # coordinate along field_name: one of the FS_ROLE_* values
FS_ROLE_REFERENCE = "reference"
FS_ROLE_TRANSFER = "transfer"
FS_ROLE_OTHER = "other"
FIT_COEFFICIENT = "fit_coefficient"  # dim: a0, a1, a2 of log10 S = sum a_k x^k
FIT_COEFFICIENT_2 = "fit_coefficient_2"  # second dim of the fit covariance
FS_FLUX_DENSITY = "FLUX_DENSITY"  # (field, spw) Jy: fd = ratio^2
FS_FLUX_DENSITY_ERROR = "FLUX_DENSITY_ERROR"  # (field, spw) Jy
FS_N_SOLUTIONS = "N_SOLUTIONS"  # (field, spw): antenna/receptor ratios behind fd (CASA numSol)
FS_GAIN_RATIO = "GAIN_RATIO"  # (field, spw): median of the per-antenna ratios, sqrt(fd)
FS_MEAN_GAIN_AMPLITUDE = "MEAN_GAIN_AMPLITUDE"  # (field, spw, antenna, receptor): mean |g|
FS_N_GAINS = "N_GAINS"  # (field, spw, antenna, receptor): gains averaged into it
FS_ANTENNA_GAIN_RATIO = "ANTENNA_GAIN_RATIO"  # (field, spw, antenna, receptor): mg / mg_ref
FS_FIT_FLUX_DENSITY = "FIT_FLUX_DENSITY"  # (field,) Jy at FIT_REFERENCE_FREQUENCY
FS_FIT_FLUX_DENSITY_ERROR = "FIT_FLUX_DENSITY_ERROR"  # (field,) Jy
FS_FIT_REFERENCE_FREQUENCY = "FIT_REFERENCE_FREQUENCY"  # (field,) Hz: 10^mean(log10 nu)
FS_FIT_COEFFICIENTS = "FIT_COEFFICIENTS"  # (field, fit_coefficient): CASA spidx
FS_FIT_COEFFICIENT_ERRORS = "FIT_COEFFICIENT_ERRORS"  # (field, fit_coefficient): spidxerr
FS_FIT_COVARIANCE = "FIT_COVARIANCE"  # (field, fit_coefficient, fit_coefficient_2): covarMat
FS_FIT_ORDER = "FIT_ORDER"  # (field,): order of the fit done, -1 when none (0 or 1 spw)
FS_ATTR_REFERENCE_FIELDS = "reference_fields"
FS_ATTR_TRANSFER_FIELDS = "transfer_fields"
FS_ATTR_REFSPWMAP = "refspwmap"  # {spw: reference spw}
FS_ATTR_GAINTHRESHOLD = "gainthreshold"
FS_ATTR_ANTENNA = "antenna"  # antennas used to derive the scale ([] = all)
FS_ATTR_FITORDER = "fitorder"
FS_ATTR_CASA_MEDIAN = "casa_median"
FS_ATTR_CASA_ERRORS = "casa_errors"
FS_ATTR_ERROR_MODEL = "error_model"  # words: how FLUX_DENSITY_ERROR was computed
# Keys of CASA's fluxscale result dict (casatasks.fluxscale's return value; setjy's fluxdict).
CASA_FS_FLUXD = "fluxd"
CASA_FS_FLUXD_ERR = "fluxdErr"
CASA_FS_NUM_SOL = "numSol"
CASA_FS_FIELD_NAME = "fieldName"
CASA_FS_FIT_FLUXD = "fitFluxd"
CASA_FS_FIT_FLUXD_ERR = "fitFluxdErr"
CASA_FS_FIT_REF_FREQ = "fitRefFreq"
CASA_FS_SPIDX = "spidx"
CASA_FS_SPIDX_ERR = "spidxerr"
CASA_FS_COVAR_MAT = "covarMat"
CASA_FS_FREQ = "freq"
CASA_FS_SPW_ID = "spwID"
CASA_FS_SPW_NAME = "spwName"
# ALMA pipeline intents (hifa_gfluxscale refintent/transintent) and the STATE OBS_MODE values
# they stand for (the pipeline's StateALMA.obs_mode_mapping, '#' forms).
PL_INTENT_AMPLITUDE = "AMPLITUDE"
PL_INTENT_PHASE = "PHASE"
PL_INTENT_BANDPASS = "BANDPASS"
PL_INTENT_CHECK = "CHECK"
PL_INTENT_DIFFGAINREF = "DIFFGAINREF"
PL_INTENT_DIFFGAINSRC = "DIFFGAINSRC"
PL_INTENT_POLARIZATION = "POLARIZATION"
PL_INTENT_POLANGLE = "POLANGLE"
PL_INTENT_POLLEAKAGE = "POLLEAKAGE"
PL_INTENT_TARGET = "TARGET"
PL_REFINTENT_DEFAULT = PL_INTENT_AMPLITUDE
PL_TRANSINTENT_DEFAULT = (
    "PHASE,BANDPASS,CHECK,DIFFGAINREF,DIFFGAINSRC,POLARIZATION,POLANGLE,POLLEAKAGE"
)
PL_INTENT_BY_OBS_MODE = {
    "CALIBRATE_AMPLI#ON_SOURCE": PL_INTENT_AMPLITUDE,
    "CALIBRATE_FLUX#ON_SOURCE": PL_INTENT_AMPLITUDE,
    "CALIBRATE_PHASE#ON_SOURCE": PL_INTENT_PHASE,
    "CALIBRATE_BANDPASS#ON_SOURCE": PL_INTENT_BANDPASS,
    "CALIBRATE_DELAY#ON_SOURCE": PL_INTENT_CHECK,
    "OBSERVE_CHECK_SOURCE#ON_SOURCE": PL_INTENT_CHECK,
    "CALIBRATE_DIFFGAIN#REFERENCE": PL_INTENT_DIFFGAINREF,
    "CALIBRATE_DIFFGAIN#ON_SOURCE": PL_INTENT_DIFFGAINSRC,
    "CALIBRATE_POLARIZATION#ON_SOURCE": PL_INTENT_POLARIZATION,
    "CALIBRATE_POL_ANGLE#ON_SOURCE": PL_INTENT_POLANGLE,
    "CALIBRATE_POL_LEAKAGE#ON_SOURCE": PL_INTENT_POLLEAKAGE,
    "CALIBRATE_TARGET#ON_SOURCE": PL_INTENT_TARGET,
    "OBSERVE_TARGET#ON_SOURCE": PL_INTENT_TARGET,
}


# ---- setjy (radflow.cal.setjy) ----
# The flux-density standards / modes of the setjy step (CASA setjy's `standard` values).
STANDARD_PERLEY_BUTLER_2017 = "Perley-Butler 2017"
STANDARD_MANUAL = "manual"
STANDARD_FLUXSCALE = "fluxscale"
# attrs[ATTR_SETJY] of the model variable: a list, one dict per field, of what setjy used. Keys:
# SETJY_* below plus FIELD_NAME, FIELD_ID (None when unknown), ATTR_SPW_ID and CASA_FS_FLUXD
# ([I, Q, U, V] Jy at SETJY_FREQUENCY).
ATTR_SETJY = "setjy"
SETJY_STANDARD = "standard"
SETJY_SOURCE = "source"  # the standard's name of the calibrator ("" for manual/fluxscale)
SETJY_FREQUENCY = "frequency"  # Hz at which CASA_FS_FLUXD is given
SETJY_SCALEBYCHAN = "scalebychan"
SETJY_REFERENCE_FREQUENCY = "reference_frequency"  # Hz (manual/fluxscale/flux.csv models)
SETJY_SPIX = "spix"
SETJY_EPOCH_MJD = "epoch_mjd"  # observation epoch used for time-variable sources (MJD, days)
SETJY_INTERPOLATION = "interpolation"
SETJY_ORIGIN = "origin"  # where a manual model came from, e.g. "flux.csv:12"
# partition_info key: the MS FIELD ids of PI_FIELD's names (read by setjy when present).
PI_FIELD_ID = "field_id"
# CASA's setjy return value: {field id: {spw id: {CASA_FS_FLUXD: [I,Q,U,V]}, CASA_FS_FIELD_NAME:
# name}, CASA_SETJY_FORMAT: text} (the fluxscale dict's key names, above).
CASA_SETJY_FORMAT = "format"


# ---- bpoly (radflow.cal.bpoly) ----
# A BPOLY solution table is an interferometer solution table (above) with cal_type
# CAL_TYPE_BPOLY: CALIBRATION_PARAMETER holds the polynomials evaluated on the spw's channels
# (frequency = the channel frequencies), and the fit itself is kept beside it so that it can be
# exported: B(nu) = exp(sum_k a_k P_k(x)) exp(i sum_k p_k P_k(x)), P_0 = 1/2, P_k = T_k
# (Chebyshev, CASA's CLIC convention), x = (2 nu - lo - hi) / (hi - lo) with lo/hi the attrs
# below (the lowest and highest channel frequency fitted, Hz).
BPOLY_AMPLITUDE_COEFFICIENT = "amplitude_coefficient"  # dim: k = 0..degamp
BPOLY_PHASE_COEFFICIENT = "phase_coefficient"  # dim: k = 0..degphase
# (time, antenna_name, receptor, amplitude_coefficient): a_k of ln|B| (natural log); 0 = flagged
BPOLY_AMPLITUDE_COEFFICIENTS = "AMPLITUDE_COEFFICIENTS"
# (time, antenna_name, receptor, phase_coefficient): p_k of arg B (rad); 0 = flagged
BPOLY_PHASE_COEFFICIENTS = "PHASE_COEFFICIENTS"
BPOLY_FIT_MASK = "FIT_MASK"  # (frequency,) bool: True = the channel may enter the fit
BPOLY_ATTR_FREQUENCY_LOW = "bpoly_frequency_low"  # Hz: x = -1
BPOLY_ATTR_FREQUENCY_HIGH = "bpoly_frequency_high"  # Hz: x = +1
BPOLY_ATTR_SPWS = "bpoly_spws"  # spw ids fitted together (several with combine='spw')
BPOLY_ATTR_DEGAMP = "degamp"
BPOLY_ATTR_DEGPHASE = "degphase"
BPOLY_ATTR_MASKCENTER = "maskcenter"
BPOLY_ATTR_MASKEDGE = "maskedge"  # percent of the channels at each edge
BPOLY_ATTR_VISNORM = "visnorm"
BPOLY_ATTR_SOLNORM = "solnorm"


# ---- runner (radflow.pipeline) ----
# Root attr of a store a recipe ran on: what ran, on what (hashes), and which calibration groups
# it wrote, so a re-run can skip (same hashes) or start again from the store without them.
ATTR_RUN = "radflow_run"
RUN_RECIPE = "recipe"  # the recipe's name
RUN_STEPS = "steps"  # [{"step", "params"}], canonical JSON
RUN_RECIPE_SHA256 = "recipe_sha256"  # of RUN_STEPS
RUN_INPUTS_SHA256 = "inputs_sha256"  # of the store identity and RUN_INPUT_FILES
RUN_INPUT_FILES = "input_files"  # {path: sha256} of files named by parameters (jyperk.csv)
RUN_CALIBRATION_GROUPS = "calibration_groups"  # keys under CALIBRATION_GROUP the run wrote
RUN_FINISHED_UTC = "finished_utc"
RUN_RADFLOW_VERSION = "radflow_version"
# The group holding solutions and per-spectrum tables of a run (calibration/<key>).
CALIBRATION_GROUP = "calibration"
# Partition attr: what the last run added to this partition, to undo it before a re-run:
# {RUN_ADDED_VARIABLES: [names], RUN_ATTRS_BEFORE: {attr: old value}, RUN_ATTRS_ADDED: [attrs]}.
ATTR_RUN_ADDED = "radflow_run_added"
RUN_ADDED_VARIABLES = "variables"
RUN_ATTRS_BEFORE = "attrs_before"
RUN_ATTRS_ADDED = "attrs_added"
# Block status in run results and JSON summaries.
STATUS_DONE = "done"
STATUS_SKIPPED = "skipped"
STATUS_FAILED = "failed"
# Per-EB JSON summary beside the store (<stem>.radflow.json) and the run's summary file name.
RUN_SUMMARY_SUFFIX = ".radflow.json"
RUN_SUMMARY_PREFIX = "radflow-run-"


# ---- switched power (radflow.cal.swpower) ----
# An EVLA switched-power solution is an interferometer solution table (above) with cal_type
# CAL_TYPE_SWPOW, one frequency (the spw centre, Hz) and receptors R/L (or X/Y).
# CALIBRATION_PARAMETER is the per-antenna scale factor C_i (applycal: V sqrt(C_i C_j)): to
# antenna temperature CT = Tcal/Pdiff, to flux density CS = 2 k Tcal/(Pdiff eta Aeff), or to the
# correlation coefficient CR; TSYS (K) = Tcal Psum/(2 Pdiff) gives the weights,
# w' = w SWPOW_ATTR_WEIGHT_SCALE / (Tsys_i Tsys_j). Beside them the inputs as used:
# SWITCHED_DIFF, SWITCHED_SUM (edited), TCAL (K, per antenna and receptor), REQUANTIZER_GAIN.
CAL_TYPE_SWPOW = "SWPOW"
SWPOW_EDITED_DIFF = "EDITED_SWITCHED_DIFF"  # bool (time, antenna, receptor): Pdiff replaced
SWPOW_EDITED_SUM = "EDITED_SWITCHED_SUM"  # bool: Psum sample flagged by editing and replaced
SWPOW_SCALE_KELVIN = "K"  # CT: visibilities in K (antenna temperature)
SWPOW_SCALE_JANSKY = "Jy"  # CS: visibilities in Jy
SWPOW_SCALE_RHO = "rho"  # CR: correlation coefficients (units UNITS_RATIO)
SWPOW_SCALES = (SWPOW_SCALE_KELVIN, SWPOW_SCALE_JANSKY, SWPOW_SCALE_RHO)
SWPOW_ATTR_SCALE = "swpow_scale"  # one of SWPOW_SCALES
SWPOW_ATTR_DATA_UNITS = "swpow_data_units"  # units of the data after applying: K, Jy or "1"
SWPOW_ATTR_WEIGHT_SCALE = "swpow_weight_scale"  # 1, or CASA's correlator efficiency squared
SWPOW_ATTR_CASA_CONSTANTS = "swpow_casa_constants"  # bool: CASA's 0.932 and 1.176 applied
SWPOW_ATTR_REQUANTIZER = "swpow_requantizer"  # bool: data divided by q_i q_j
SWPOW_ATTR_APERTURE = "swpow_aperture"  # {"band", "efficiency", "area_m2"} (scale Jy)
SWPOW_ATTR_EDITING = "swpow_editing"  # {parameter: value} of the Pdiff/Psum editing done
SWPOW_ATTR_TCAL_SOURCE = "swpow_tcal_source"  # "CALDEVICE" or "table (linear in frequency)"
SWPOW_ATTR_RHO_NORMALISATION = "swpow_rho_normalisation"  # "power" or "noise_diode"
SWPOW_CORRELATOR_EFFICIENCY = 0.932  # CASA EVLASwPow correff_ (WIDAR, 4-bit)
SWPOW_FRINGE_ROTATION_SCALE = 1.176  # CASA EVLASwPow frgrotscale_
