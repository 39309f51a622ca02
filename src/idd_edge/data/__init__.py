"""Data stages: synthetic IDD generation, polygon -> mask conversion, split organisation."""
