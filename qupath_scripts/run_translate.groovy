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
 *      as "<image name> (virtual HER2)", image type Brightfield H-DAB, with the same ROIs.
 * Status        PROJECT/her2/status/translate/<entryID>.json; QuPath's multi-image run exits 0
 *               even when an image fails, so check with
 *               `her2 qupath check --project PROJECT --step translate` (run_batch.sh does).
 */
import groovy.json.JsonOutput
import java.awt.image.BufferedImage
import qupath.lib.images.ImageData
import qupath.lib.images.servers.ImageServerProvider
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

    def cmd = [HER2, 'translate', '--run', RUN, '--slide', slide.getAbsolutePath(),
               '--roi', rois.getAbsolutePath(), '--out', out.getAbsolutePath()]
    println 'her2: ' + cmd.join(' ')
    def pb = new ProcessBuilder(cmd).redirectErrorStream(true)
    def proc = pb.start()
    def log = new File(workDir, eid + '_translate.log')
    log.withOutputStream { os -> proc.getInputStream().transferTo(os) }
    int rc = proc.waitFor()
    if (rc != 0)
        throw new IOException('her2 translate exited with ' + rc + '; see ' + log)
    if (!out.isFile() || out.length() == 0)
        throw new IOException('her2 translate wrote no output ' + out)

    // Add the virtual slide once (a re-run reuses the entry)
    def project = getProject()
    def outUri = out.toURI()
    def existing = project.getImageList().find { e -> e.getServerBuilder().getURIs().contains(outUri) }
    def newEntry = existing
    if (newEntry == null) {
        def support = ImageServerProvider.getPreferredUriImageSupport(BufferedImage.class, outUri.toString())
        if (support == null || support.getBuilders().isEmpty())
            throw new IOException('QuPath cannot open ' + out)
        newEntry = project.addImage(support.getBuilders().get(0))
        newEntry.setImageName(entry.getImageName() + ' (virtual HER2)')
    }
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
