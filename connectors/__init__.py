"""Platform connectors: one package per platform. They import the core; the core never imports them."""
