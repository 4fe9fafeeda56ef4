"""Device identity: the development CA, the device registry, the broker's configuration."""
