"""The pure core: records in, results out. No I/O, no clock reads; the as-of date is a parameter."""
