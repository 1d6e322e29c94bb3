"""What drives the service from outside: notebook helpers (:mod:`tools.notebook`) and the
simulated A/B traffic of ``feed ab simulate`` (:mod:`tools.simulate`). They may import both
``feed`` and ``service``; nothing but the CLI imports them."""
