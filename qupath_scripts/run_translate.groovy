/**
 * her2 / QuPath 0.6: run `her2 translate` on each image's ROIs and add the virtual HER2 slides
 * to the project, next to the H&E.
 *
 * GUI:          Automate > Script editor, open this file, set RUN below (or pass it as the
 *               first argument), Run > Run for project; then File > Save (the project changes).
 * Command line: QuPath script -p PROJECT/project.qpproj -s run_translate.groovy \
 *                   --args RUN_DIR [--args HER2_EXECUTABLE]
 *               RUN_DIR = a trained run (`her2 train --out RUN_DIR`); HER2_EXECUTABLE defaults to
 *               $HER2_BIN or `her2` on the PATH.
 * For each image (entries with her2.role her2_registered / virtual_her2 are skipped):
 *   1. its annotations -> PROJECT/her2/translate/<entryID>_rois.geojson
 *   2. her2 translate --run RUN --slide IMG --roi ROIS.geojson --out PROJECT/her2/translate/<entryID>_virtual_her2.ome.tif
 *   3. the output is checked (exit code 0, file exists and is not empty) and added to the project
 *      as "<image name> (virtual HER2)", image type Brightfield H-DAB, with the same ROIs:
 *      `her2 qupath builder` writes its entry — the ROI box at the model's µm/px, scaled and
 *      shifted onto the H&E's level-0 grid, with the H&E's size and µm/px — so the ROIs drawn
 *      on the H&E fall on the same tissue of the virtual slide.
 * Status        PROJECT/her2/status/translate/<entryID>.json; QuPath's multi-image run exits 0
 *               even when an image fails, so check with
 *               `her2 qupath check --project PROJECT --step translate` (run_batch.sh does).
 */
import groovy.json.JsonOutput
import qupath.lib.images.ImageData
import qupath.lib.images.servers.ImageServerBuilder
import qupath.lib.images.servers.ImageServers
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO

String RUN = args.size() > 0 ? args[0] : ''
String HER2 = args.size() > 1 ? args[1] : (System.getenv('HER2_BIN') ?: 'her2')

def entry = getProjectEntry()
def eid = entry.getID()
def statusDir = new File(buildFilePath(PROJECT_BASE_DIR, 'her2', 'status', 'translate'))
statusDir.mkdirs()
def writeStatus = { boolean ok, String message, String output ->
    new File(statusDir, eid + '.json').text = JsonOutput.toJson([ok: ok, entryID: eid,
        image: entry.getImageName(), output: output, message: message]) + '\n'
}

try {
    def role = entry.getMetadataValue('her2.role')
    if (role in ['her2_registered', 'virtual_her2', 'her2']) {
        writeStatus(true, 'skipped: role ' + role, null)
        return
    }
    if (!RUN)
        throw new IllegalArgumentException('no run folder given: pass --args RUN_DIR')
    def annotations = getAnnotationObjects().findAll { it.getROI()?.isArea() }
    if (annotations.isEmpty()) {
        writeStatus(true, 'skipped: no area annotations to translate', null)
        return
    }
    def uris = entry.getServerBuilder().getURIs()
    if (uris.size() != 1)
        throw new IllegalStateException('expected one image file behind this entry, found ' + uris)
    def slide = new File(uris.iterator().next())

    def workDir = new File(buildFilePath(PROJECT_BASE_DIR, 'her2', 'translate'))
    workDir.mkdirs()
    def rois = new File(workDir, eid + '_rois.geojson')
    exportObjectsToGeoJson(annotations, rois.getAbsolutePath(), 'FEATURE_COLLECTION')
    def out = new File(workDir, eid + '_virtual_her2.ome.tif')

    def log = new File(workDir, eid + '_translate.log')
    def runHer2 = { List<String> cmd ->
        println 'her2: ' + cmd.join(' ')
        def proc = new ProcessBuilder(cmd).redirectErrorStream(true).start()
        log.withWriterAppend { w -> w << proc.getInputStream().text }
        int rc = proc.waitFor()
        if (rc != 0)
            throw new IOException('her2 ' + cmd[1] + ' exited with ' + rc + '; see ' + log)
    }
    log.text = ''
    runHer2([HER2, 'translate', '--run', RUN, '--slide', slide.getAbsolutePath(),
             '--roi', rois.getAbsolutePath(), '--out', out.getAbsolutePath(), '--overwrite'])
    if (!out.isFile() || out.length() == 0)
        throw new IOException('her2 translate wrote no output ' + out)
    // The entry of the virtual slide in this image's level-0 frame (affine scale + shift)
    def builderFile = new File(workDir, eid + '_virtual_her2.builder.json')
    runHer2([HER2, 'qupath', 'builder', '--slide', out.getAbsolutePath(),
             '--frame', slide.getAbsolutePath(), '--out', builderFile.getAbsolutePath()])
    ImageServers.getServerBuilderFactory()  // registers the serverBuilder types with GsonTools
    def serverBuilder = GsonTools.getInstance().fromJson(builderFile.text, ImageServerBuilder.ServerBuilder.class)

    // Add the virtual slide once (a re-run replaces the entry's builder)
    def project = getProject()
    def outUri = out.toURI()
    def existing = project.getImageList().find { e -> e.getServerBuilder().getURIs().contains(outUri) }
    def newEntry = existing
    if (newEntry != null)
        project.removeImage(newEntry, true)
    newEntry = project.addImage(serverBuilder)
    newEntry.setImageName(entry.getImageName() + ' (virtual HER2)')
    newEntry.putMetadataValue('her2.role', 'virtual_her2')
    newEntry.putMetadataValue('her2.image_type', 'BRIGHTFIELD_H_DAB')
    newEntry.putMetadataValue('her2.source_entry', eid)
    newEntry.putMetadataValue('her2.run', RUN)
    def data = newEntry.readImageData()
    data.setImageType(ImageData.ImageType.BRIGHTFIELD_H_DAB)
    def hierarchy = data.getHierarchy()
    hierarchy.removeObjects(hierarchy.getAnnotationObjects(), true)
    hierarchy.addObjects(PathIO.readObjects(rois))
    newEntry.saveImageData(data)
    project.syncChanges()
    writeStatus(true, 'added ' + newEntry.getImageName(), out.getAbsolutePath())
} catch (Throwable t) {
    writeStatus(false, String.valueOf(t), null)
    throw t
}
