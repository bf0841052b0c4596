/**
 * her2 / QuPath 0.6: export paired tiles (H&E + registered HER2) of annotated regions at a
 * given resolution in microns per pixel.
 *
 * GUI:          Automate > Script editor, open this file, Run > Run for project.
 *               Edit the defaults below (MPP, TILE, OUT) when running from the GUI.
 * Command line: QuPath script -p PROJECT/project.qpproj export_tiles.groovy \
 *                   --args MPP --args TILE --args OUT_DIR
 *               e.g. --args 0.5 --args 512 --args /data/tiles
 * Pairs         an H&E entry is paired with the entry named in its metadata 'her2.pair'
 *               (written by `her2 qupath project --registered ...`: the affine HER2 entry that
 *               lives in the H&E pixel grid). Without a pair only H&E tiles are written.
 * Writes        OUT_DIR/<image name>/<x>_<y>_he.png and <x>_<y>_her2.png (x, y = level-0 top-left),
 *               one tile per grid cell whose centre lies inside an annotation, plus
 *               OUT_DIR/<image name>/tiles.json (mpp, tile size, downsample, tile list).
 * Status        PROJECT/her2/status/tiles/<entryID>.json; check a batch with
 *               `her2 qupath check --project PROJECT --step tiles`.
 */
import groovy.json.JsonOutput
import qupath.lib.common.GeneralTools
import qupath.lib.regions.RegionRequest

double MPP = args.size() > 0 ? Double.parseDouble(args[0]) : 0.5
int TILE = args.size() > 1 ? Integer.parseInt(args[1]) : 512
String OUT = args.size() > 2 ? args[2] : buildFilePath(PROJECT_BASE_DIR, 'her2', 'tiles')

def entry = getProjectEntry()
def eid = entry.getID()
def statusDir = new File(buildFilePath(PROJECT_BASE_DIR, 'her2', 'status', 'tiles'))
statusDir.mkdirs()
def writeStatus = { boolean ok, String message, int n ->
    new File(statusDir, eid + '.json').text = JsonOutput.toJson([ok: ok, entryID: eid,
        image: entry.getImageName(), tiles: n, message: message]) + '\n'
}

try {
    def role = entry.getMetadataValue('her2.role')
    if (role in ['her2_registered', 'virtual_her2', 'her2']) {
        writeStatus(true, 'skipped: role ' + role + ' (exported with its H&E pair)', 0)
        return
    }
    def server = getCurrentServer()
    // getAveragedPixelSize() is 1 (pixel) on an uncalibrated image; getAveragedPixelSizeMicrons()
    // is NaN there, so only it can refuse the image (tests/test_qupath_scripts.py runs this block)
    // her2: pixel-size guard (begin)
    def micronsPerPixel = { cal ->
        double um = cal.getAveragedPixelSizeMicrons()
        if (Double.isNaN(um) || !(um > 0))
            throw new IllegalStateException('image has no pixel size in microns; set it in Image > Pixel size')
        return um
    }
    // her2: pixel-size guard (end)
    double serverMpp = micronsPerPixel(server.getPixelCalibration())
    double downsample = MPP / serverMpp
    double step = TILE * downsample

    def pairServer = null
    def pairId = entry.getMetadataValue('her2.pair')
    if (pairId) {
        def pairEntry = getProject().getImageList().find { it.getID() == pairId }
        if (pairEntry == null)
            throw new IllegalStateException('pair entry ' + pairId + ' not found in the project')
        pairServer = pairEntry.getServerBuilder().build()
    }

    def name = GeneralTools.stripInvalidFilenameChars(entry.getImageName())
    def outDir = new File(OUT, name)
    outDir.mkdirs()
    def tiles = []
    for (annotation in getAnnotationObjects()) {
        def roi = annotation.getROI()
        if (roi == null || !roi.isArea())
            continue
        int w = (int) Math.round(step)          // tile width in level-0 pixels
        int x0 = (int) Math.floor(roi.getBoundsX() / w) * w
        int y0 = (int) Math.floor(roi.getBoundsY() / w) * w
        for (int yi = y0; yi < roi.getBoundsY() + roi.getBoundsHeight(); yi += w) {
            for (int xi = x0; xi < roi.getBoundsX() + roi.getBoundsWidth(); xi += w) {
                if (!roi.contains(xi + w / 2.0, yi + w / 2.0))
                    continue
                if (xi < 0 || yi < 0 || xi + w > server.getWidth() || yi + w > server.getHeight())
                    continue
                def stem = xi + '_' + yi
                def req = RegionRequest.createInstance(server.getPath(), downsample, xi, yi, w, w)
                writeImageRegion(server, req, new File(outDir, stem + '_he.png').getAbsolutePath())
                if (pairServer != null) {
                    def req2 = RegionRequest.createInstance(pairServer.getPath(), downsample, xi, yi, w, w)
                    writeImageRegion(pairServer, req2, new File(outDir, stem + '_her2.png').getAbsolutePath())
                }
                tiles << [x: xi, y: yi, size_level0: w, roi: annotation.getName(),
                          classification: annotation.getPathClass()?.toString()]
            }
        }
    }
    new File(outDir, 'tiles.json').text = JsonOutput.prettyPrint(JsonOutput.toJson([
        image: entry.getImageName(), mpp: MPP, tile: TILE, downsample: downsample,
        paired: pairServer != null, tiles: tiles])) + '\n'
    // Check the output of this image before reporting success
    def missing = tiles.findAll { t -> !new File(outDir, t.x + '_' + t.y + '_he.png').isFile() }
    if (!missing.isEmpty())
        throw new IOException(missing.size() + ' tiles were not written in ' + outDir)
    writeStatus(true, tiles.isEmpty() ? 'no annotated area: 0 tiles' : 'written to ' + outDir, tiles.size())
    println "her2: ${tiles.size()} tile pairs of ${entry.getImageName()} at ${MPP} µm/px -> ${outDir}"
} catch (Throwable t) {
    writeStatus(false, String.valueOf(t), 0)
    throw t
}
