"""Models: loading (hub, folder, safetensors, packaged), facts, layer surgery, heads, students, vocabulary."""
from tfcompress.models.facts import count_params, ensure_built, hidden_size, model_input_names, num_layers  # noqa: F401
from tfcompress.models.loading import (  # noqa: F401
    DEFAULT_MODEL,
    LabelMismatchError,
    ModelLoadError,
    ModelNotFoundError,
    load_model,
    load_tokenizer,
    resolve_model_path,
    resolve_pooling,
    save_model,
)
from tfcompress.models.student import make_student, uniform_layer_indices  # noqa: F401
from tfcompress.models.surgery import (  # noqa: F401
    LayerRef,
    encoder_dense_layers,
    find_layers,
    iter_layers,
    relative_weight_name,
    replace_layer,
    select_dense_layers,
    word_embedding_ref,
)
