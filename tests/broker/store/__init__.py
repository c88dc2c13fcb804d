"""Tests of the dev broker's message stores."""
