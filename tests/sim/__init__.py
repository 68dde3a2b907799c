"""Tests of the simulated streaming site (package ``sim``)."""
