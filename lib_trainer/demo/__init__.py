"""The demo run and the model fixtures: tiny random checkpoints in the WebUI's file layouts (tiny_model) and the
run that trains one end to end (run; ``python -m lib_trainer.demo``)."""
