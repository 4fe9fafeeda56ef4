"""Simulated device firmware: watches and scales that behave like real devices.

It imports only the vital-sign domain (and the generic paho adapter): a device knows SenML,
its certificate and its broker, nothing of the backend.
"""
