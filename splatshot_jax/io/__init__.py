"""File formats: PLY (point clouds, 3DGS), images and videos. Every writer is atomic."""
