"""Models: pyramid, encoders (standard, C4/D4 group convolutions), decoders, image model, losses."""
