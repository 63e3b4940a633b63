"""MeasurementSet (MSv2) <-> radflow store. The only code in radflow that opens CASA tables."""
