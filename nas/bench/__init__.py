"""The placement benchmark: tables of trained placements per (model, task) and criteria scored against them."""
