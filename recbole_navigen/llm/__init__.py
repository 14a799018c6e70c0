"""Loading of pretrained language and embedding models: hub names, local folders and offline aliases."""
