"""Baton's public contracts: names and pydantic models shared by workflow, activities, API and tests."""
