"""Build the example pipelines with CellProfiler's own API and save them as .cppipe files.

    .venv/bin/python example_pipelines/build_pipelines.py [--out example_pipelines]

The .cppipe files in this folder were written by this script (CellProfiler 4.2.8); edit the
script rather than the files, then run it again. Each pipeline reads the images it is given
with ``-i`` (the bundled ``example_images/images``) and writes to the folder given with ``-o``:

    .venv/bin/cellprofiler -c -r -p example_pipelines/segment_and_measure.cppipe \
        -i example_images/images -o output/segment_and_measure --plugins-directory plugins
"""
import argparse
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGINS = os.path.join(os.path.dirname(HERE), "plugins")

# The bundled example images are named <style>_<id>.png (style: fluo or he).
FILE_REGEXP = "^(?P<Style>[A-Za-z]+)_(?P<Id>[0-9A-Za-z]+)"


def setup():
    warnings.filterwarnings("ignore")
    import cellprofiler_core.preferences as prefs

    prefs.set_headless()
    prefs.set_plugin_directory(PLUGINS)
    from cellprofiler_core.utilities.core.modules import fill_modules

    fill_modules()


def module(name, **settings):
    """A configured module instance; keyword arguments set settings by attribute name."""
    from cellprofiler_core.utilities.core.modules import instantiate_module

    m = instantiate_module(name)
    for key, value in settings.items():
        getattr(m, key).value = value
    return m


def input_modules(group_by=None):
    """Images, Metadata (style and id from the file name), NamesAndTypes (all images as the
    colour image "Original"), Groups (optionally by one metadata key)."""
    images = module("Images")
    metadata = module("Metadata", wants_metadata=True)
    extraction = metadata.extraction_methods[0]
    extraction.extraction_method.value = "Extract from file/folder names"
    extraction.source.value = "File name"
    extraction.file_regexp.value = FILE_REGEXP
    names = module(
        "NamesAndTypes",
        assignment_method="All images",
        single_load_as_choice="Color image",
        single_image_provider="Original",
    )
    groups = module("Groups", wants_groups=bool(group_by))
    if group_by:
        groups.grouping_metadata[0].metadata_choice.value = group_by
    return [images, metadata, names, groups]


def export(*object_names, directory="Default Output Folder|"):
    """ExportToSpreadsheet of the Image table (and the given objects), no file prefix."""
    m = module(
        "ExportToSpreadsheet",
        directory=directory,
        wants_prefix=False,
        wants_overwrite_without_warning=True,
        add_metadata=True,
        wants_everything=False,
    )
    m.object_groups[0].name.value = "Image"
    for name in object_names:
        m.add_object_group()
        m.object_groups[-1].name.value = name
    return m


def outline_overlay(objects_name, overlay_name, colour, suffix, folder):
    """OverlayOutlines of ``objects_name`` on the original image + SaveImages of the overlay
    as <image>``suffix``.png in the Default Output Folder's sub-folder ``folder``."""
    overlay = module(
        "OverlayOutlines",
        image_name="Original",
        output_image_name=overlay_name,
        line_mode="Inner",
        wants_color="Color",
        max_type="Max possible",
    )
    overlay.outlines[0].objects_name.value = objects_name
    overlay.outlines[0].color.value = colour
    save = module(
        "SaveImages",
        save_image_or_figure="Image",
        image_name=overlay_name,
        file_name_method="From image filename",
        file_image_name="Original",
        wants_file_name_suffix=True,
        file_name_suffix=suffix,
        file_format="png",
        bit_depth="8-bit integer",
        pathname="Default Output Folder sub-folder|" + folder,
        overwrite=True,
    )
    return [overlay, save]


def segment_and_measure():
    """Nuclei (automatic size) -> cells -> shape/intensity -> overlays, label TIFFs, CSVs."""
    mods = input_modules()
    mods.append(
        module(
            "ColorToGray",
            image_name="Original",
            combine_or_split="Combine",
            grayscale_name="DNA",
        )
    )
    mods.append(
        module(
            "SegmentNucleiStyleAdapted",
            x_name="Original",
            y_name="Nuclei",
            size_choice="Automatic (per image)",
            want_confidence=True,
        )
    )
    mods.append(
        module(
            "IdentifySecondaryObjects",
            x_name="Nuclei",
            y_name="Cells",
            method="Distance - N",
            image_name="DNA",
            distance_to_dilate=6,
        )
    )
    shape = module("MeasureObjectSizeShape", calculate_zernikes=False)
    shape.objects_list.value = "Nuclei, Cells"
    mods.append(shape)
    intensity = module("MeasureObjectIntensity")
    intensity.images_list.value = "DNA"
    intensity.objects_list.value = "Nuclei"
    mods.append(intensity)
    mods += outline_overlay("Nuclei", "NucleiOverlay", "Yellow", "_overlay", "overlays")
    mods.append(
        module(
            "ConvertObjectsToImage",
            object_name="Nuclei",
            image_name="NucleiLabels",
            image_mode="uint16",
        )
    )
    mods.append(
        module(
            "SaveImages",
            save_image_or_figure="Image",
            image_name="NucleiLabels",
            file_name_method="From image filename",
            file_image_name="Original",
            wants_file_name_suffix=False,
            file_format="tiff",
            bit_depth="16-bit integer",
            # The tifffile that CellProfiler 4.2 runs with on Python 3.11 no longer accepts
            # the "compress" argument that SaveImages passes for compressed TIFFs.
            tiff_compress=False,
            pathname="Default Output Folder sub-folder|labels",
            overwrite=True,
        )
    )
    mods.append(export("Nuclei", "Cells"))
    return mods


def size_estimation_qc():
    """Nucleus size of every image and pooled per image style (group), for QC."""
    mods = input_modules(group_by="Style")
    mods.append(
        module(
            "EstimateNucleusSize",
            image_name="Original",
            scope="All images of the group (pooled)",
            want_objects=True,
            objects_name="PresegNuclei",
        )
    )
    mods += outline_overlay("PresegNuclei", "PresegOverlay", "Cyan", "_size_qc", "size_qc")
    mods.append(export())
    return mods


def measured_size_drives_segmentation():
    """EstimateNucleusSize per image, its measurement sets SegmentNucleiStyleAdapted's size."""
    mods = input_modules()
    mods.append(
        module("EstimateNucleusSize", image_name="Original", scope="Each image individually")
    )
    mods.append(
        module(
            "SegmentNucleiStyleAdapted",
            x_name="Original",
            y_name="Nuclei",
            size_choice="From an image measurement",
            size_measurement="NucleusSize_MedianDiameter",
        )
    )
    shape = module("MeasureObjectSizeShape", calculate_zernikes=False)
    shape.objects_list.value = "Nuclei"
    mods.append(shape)
    mods.append(export("Nuclei"))
    return mods


# Style adaptation writes (and the segmentation pipelines read) this model folder in the
# Default Output Folder: run the two pipelines of workflow (a) with the same -o.
ADAPTED_MODEL = "adapted_model"


def style_adaptation_train():
    """Workflow (a), step 1: adapt the shipped model to all images of the run (quick preset)
    at the end of the group; writes Default Output Folder/adapted_model."""
    mods = input_modules()
    mods.append(
        module(
            "TrainStyleAdaptation",
            image_name="Original",
            output_directory="Default Output Folder|",
            output_name=ADAPTED_MODEL,
            when="At the end of the group",
            preset="Quick",
            use_gpu=True,
        )
    )
    # Image.csv and Experiment.csv (what the adaptation did) in OUT/style_adaptation/, apart
    # from the tables of the segmentation pipeline that is run with the same -o.
    mods.append(export("Experiment", directory="Default Output Folder sub-folder|style_adaptation"))
    return mods


def segment_with_adapted_model():
    """Workflow (a), step 2: segment with the model written by style_adaptation_train
    (Default Output Folder/adapted_model) and measure, as segment_and_measure does."""
    mods = input_modules()
    mods.append(
        module(
            "SegmentNucleiStyleAdapted",
            x_name="Original",
            y_name="Nuclei",
            model_choice="Custom",
            model_directory="Default Output Folder|",
            model_name=ADAPTED_MODEL,
            size_choice="Automatic (per image)",
        )
    )
    shape = module("MeasureObjectSizeShape", calculate_zernikes=False)
    shape.objects_list.value = "Nuclei"
    mods.append(shape)
    mods += _label_images("Nuclei")
    mods.append(export("Nuclei"))
    return mods


def adapt_then_segment():
    """Workflow (b), one pipeline: adapt to the group's images before its first cycle, then
    segment every image with the adapted model, measure, save label images, export."""
    mods = input_modules()
    mods.append(
        module(
            "TrainStyleAdaptation",
            image_name="Original",
            output_directory="Default Output Folder|",
            output_name=ADAPTED_MODEL,
            when="Before segmenting: on the group's images first",
            preset="Quick",
            use_gpu=True,
        )
    )
    mods.append(
        module(
            "SegmentNucleiStyleAdapted",
            x_name="Original",
            y_name="Nuclei",
            model_choice="Custom",
            model_directory="Default Output Folder|",
            model_name=ADAPTED_MODEL,
            size_choice="Automatic (per image)",
        )
    )
    shape = module("MeasureObjectSizeShape", calculate_zernikes=False)
    shape.objects_list.value = "Nuclei"
    mods.append(shape)
    mods += _label_images("Nuclei")
    mods.append(export("Nuclei", "Experiment"))
    return mods


def _label_images(objects_name):
    """ConvertObjectsToImage + SaveImages: labels/<image>.tiff (16-bit label images)."""
    return [
        module(
            "ConvertObjectsToImage",
            object_name=objects_name,
            image_name=objects_name + "Labels",
            image_mode="uint16",
        ),
        module(
            "SaveImages",
            save_image_or_figure="Image",
            image_name=objects_name + "Labels",
            file_name_method="From image filename",
            file_image_name="Original",
            wants_file_name_suffix=False,
            file_format="tiff",
            bit_depth="16-bit integer",
            tiff_compress=False,  # see segment_and_measure
            pathname="Default Output Folder sub-folder|labels",
            overwrite=True,
        ),
    ]


PIPELINES = {
    "segment_and_measure": segment_and_measure,
    "size_estimation_qc": size_estimation_qc,
    "measured_size_drives_segmentation": measured_size_drives_segmentation,
    "style_adaptation_train": style_adaptation_train,
    "segment_with_adapted_model": segment_with_adapted_model,
    "adapt_then_segment": adapt_then_segment,
}


def build(name):
    from cellprofiler_core.pipeline import Pipeline

    pipeline = Pipeline()
    for i, m in enumerate(PIPELINES[name](), start=1):
        m.set_module_num(i)
        pipeline.add_module(m)
    return pipeline


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=HERE, help="folder for the .cppipe files")
    args = ap.parse_args(argv)
    setup()
    from cellprofiler_core.pipeline import Pipeline

    os.makedirs(args.out, exist_ok=True)
    for name in PIPELINES:
        path = os.path.join(args.out, name + ".cppipe")
        pipeline = build(name)
        with open(path, "w") as f:
            pipeline.dump(f)
        check = Pipeline()
        check.load(path)
        assert len(check.modules()) == len(pipeline.modules()), path
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
