"""Tests for the recommender stack (a package so that tests.support imports like any module)."""
