"""The shipped samples (one folder per source, see README.md), installed as the package data of m3e_hq.samples."""
