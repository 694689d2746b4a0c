"""The review app: a local web page over a shoot (`clip-aesthetics app FOLDER`)."""
